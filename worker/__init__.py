"""facegender's service side: the job lifecycle, the database, the queue and the CLI."""
