# cimsnap as a container: the proxy plugin serving on /run/cimsnap/cimsnap.sock.
# Mount the host's /run/cimsnap and /var/lib/cimsnap so containerd can reach the socket
# and layers survive restarts:
#   docker run -d -v /run/cimsnap:/run/cimsnap -v /var/lib/cimsnap:/var/lib/cimsnap cimsnap
FROM python:3.11-slim-bookworm
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cimsnap ./cimsnap
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
VOLUME ["/var/lib/cimsnap", "/run/cimsnap"]
ENTRYPOINT ["cimsnap"]
CMD ["serve"]
