"""Generation jobs: their records, the durable queue workers take them from, and the
small notices (progress, started, completed, failed) that travel back to web nodes."""
