# syntax=docker/dockerfile:1
# cimsnap in a container, beside containerd on the host.
#
#   docker build -t cimsnap .
#   docker run -d --name cimsnap --restart unless-stopped \
#       -v /run/cimsnap:/run/cimsnap -v /var/lib/cimsnap:/var/lib/cimsnap cimsnap
#
# containerd (on the host) reaches the server through the bind-mounted socket
# /run/cimsnap/cimsnap.sock; the layers stay in the host's /var/lib/cimsnap across
# container restarts. Start it before containerd. See docs/containerd.md ("In a container").
#
# User: the image runs as the unprivileged user cimsnap (uid/gid 10001). containerd runs
# as root and can use the socket whoever owns it, and a server that only writes its own
# files needs no privilege. Give the host directories to that uid once:
#   install -d -o 10001 -g 10001 /run/cimsnap /var/lib/cimsnap
# The trade-off: the Diff service reads layer blobs through containerd's socket, which is
# root-only. Mount /run/containerd and either run as root (docker run --user 0 ...) or have
# containerd create its socket with gid 10001 ([grpc] gid = 10001); both give the power of
# root on the host. Root is also needed to read files cimsnap did not write (snapshots
# written through scratch/ by other users, containerd's content directory as a fast path).

# Pinned: a rebuild gets the same Python. Bump deliberately (both stages use it).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cimsnap ./cimsnap
# cimsnap's wheel and every dependency's wheel; the runtime stage installs offline.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels cimsnap \
    && groupadd --system --gid 10001 cimsnap \
    && useradd --system --uid 10001 --gid cimsnap --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cimsnap \
    && install -d -o cimsnap -g cimsnap -m 0700 /var/lib/cimsnap \
    && install -d -o cimsnap -g cimsnap -m 0755 /run/cimsnap
VOLUME ["/var/lib/cimsnap", "/run/cimsnap"]
USER cimsnap
# Exit 0 only when the server answers SERVING on its socket.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
    CMD ["cimsnap", "health", "--timeout", "5", "--quiet"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cimsnap", "serve"]
CMD []
