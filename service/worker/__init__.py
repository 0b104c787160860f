"""Job execution: the runner shared by the embedded worker process and Celery workers."""
