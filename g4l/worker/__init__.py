"""Generation worker processes: they own the models, take jobs from the queue, store
results in GridFS and report progress through Redis. One per GPU (or CPU box)."""
