"""Where state lives: sessions and jobs in Redis, every audio version in GridFS."""
