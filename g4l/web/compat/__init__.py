"""Routes in the shapes of clients that exist (they are never changed for us): each module
is a thin twin of the same services, differing only in the envelope."""
