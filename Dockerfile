# evserve's container image. The first stage builds evserve's wheel and collects the wheels of
# its dependencies; the second installs them, offline, into a slim Python image that runs
# evserve as an unprivileged user. No compiler or wheel is left in the image.
#
#   docker build -t evserve .                                    # NumPy instances (CPU)
#   docker build -t evserve:gpu --build-arg EVSERVE_EXTRAS=gpu .  # + CuPy and CUDA 12 libraries from PyPI
#   docker run --rm --stop-timeout 40 -p 8000:8000 -p 8002:8002 -v "$PWD/models:/models:ro" evserve
#   docker run --rm --gpus all ... evserve:gpu                   # the driver comes from the NVIDIA container toolkit
#
# Arguments after the image name go to evserve (`... evserve --threads 4`). On SIGTERM evserve
# answers not ready for --drain-grace-secs (5 s), then drains for up to --exit-timeout-secs
# (30 s): give `docker stop` that long (--stop-timeout, or compose's stop_grace_period).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY server/ server/
COPY protocol/ protocol/
COPY gpu/ gpu/
# EVSERVE_EXTRAS: evserve's extras, comma-separated (gpu, trace). With gpu, CuPy's `ctk` extra
# brings the CUDA 12 runtime libraries from PyPI, so the slim base needs no CUDA toolkit.
ARG EVSERVE_EXTRAS=""
RUN case ",${EVSERVE_EXTRAS}," in *,gpu,*) ctk="cupy-cuda12x[ctk]>=14" ;; *) ctk="" ;; esac \
    && extras="${EVSERVE_EXTRAS:+[${EVSERVE_EXTRAS}]}" \
    && pip wheel --no-cache-dir --wheel-dir /wheels ".${extras}" ${ctk:+"${ctk}"} \
    && printf '%s\n' "evserve${extras}" ${ctk:+"${ctk}"} > /wheels/requirements.txt

FROM python:${PYTHON_VERSION}-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# A fixed numeric user, so Kubernetes can check runAsNonRoot; group 0 lets OpenShift's
# arbitrary user ids share the home directory.
RUN useradd --uid 1000 --gid 0 --create-home --home-dir /home/evserve --shell /usr/sbin/nologin evserve \
    && mkdir /models \
    && chmod g=u /home/evserve
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels --requirement /wheels/requirements.txt
USER 1000
WORKDIR /home/evserve
EXPOSE 8000 8002
# Ready, not merely live: Docker marks the container unhealthy while models load and during the
# drain grace. The check reads port 8000; a container run with another --http-port needs its own.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["evserve", "--model-repository", "/models"]
