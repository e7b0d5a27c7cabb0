//! The job a worker process runs (see issue 10): being written.
