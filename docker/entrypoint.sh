#!/bin/sh
# One image, several roles: web (migrates first), worker-gpu, worker-cpu (with the beat schedule).
set -eu
case "${1:-web}" in
  web)
    python manage.py migrate --noinput
    python manage.py rotate_keys --init
    exec gunicorn config.wsgi --bind 0.0.0.0:8000 --workers "${WEB_CONCURRENCY:-4}" --access-logfile - ;;
  worker-gpu)
    exec celery -A workers.celery worker -Q gpu --concurrency=1 --prefetch-multiplier=1 --loglevel=INFO ;;
  worker-cpu)
    exec celery -A workers.celery worker --beat -Q cpu --concurrency="${CPU_CONCURRENCY:-2}" \
      --schedule /var/lib/modelcourt/celerybeat-schedule --loglevel=INFO ;;
  *) exec "$@" ;;
esac
