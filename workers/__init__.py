"""Workers: the Celery app lives in workers.celery (`celery -A workers` finds it there)."""
