# Stand-in for python:3.11-slim where Docker Hub cannot be reached (test harness only):
# bookworm's Python 3.11 with pip, installing system-wide as the official image does.
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && ln -s /usr/bin/python3 /usr/local/bin/python
ENV PIP_CERT=/usr/local/share/sage-standin/ca.crt \
    LANG=C.UTF-8
CMD ["python3"]
