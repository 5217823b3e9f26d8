"""The behaviour of every operation, once; Socket.IO and HTTP adapters call into it."""
