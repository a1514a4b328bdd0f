# Holdfast's container image: one static binary on distroless, running as
# a non-root user, fit for a read-only root filesystem. The same image runs
# the relay (the default command) and every operator command:
#   docker run --rm IMAGE queue stats --config /etc/holdfast/holdfast.yaml
#
# Build it with the version stamped in:
#   docker build --build-arg VERSION=$(git describe --always --dirty) -t holdfast .
#
# Probes are Kubernetes's job (/readyz and /healthz on ops.addr), so the
# image has no HEALTHCHECK. Configuration and secrets are mounted at run
# time, never copied in.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# Only the Go packages: nothing else from the working tree (var/ holds
# development secrets) gets near the image.
COPY cmd ./cmd
COPY relay ./relay
COPY queue ./queue
COPY breaker ./breaker
COPY auth ./auth
ARG VERSION=dev
# Static (no libc), reproducible paths, version stamped for
# "holdfast version" and the build_info metric.
RUN CGO_ENABLED=0 GOOS=linux go build -trimpath \
	-ldflags "-s -w -X main.version=${VERSION}" \
	-o /out/holdfast ./cmd/holdfast

# distroless static: CA certificates (for Entra ID, Graph and Exchange
# Online), time zone data, /etc/passwd with the nonroot user, and nothing
# else: no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/holdfast /usr/local/bin/holdfast
# 65532, distroless's nonroot. Kubernetes checks it with runAsNonRoot.
USER 65532:65532
EXPOSE 2525 8025 8026
ENTRYPOINT ["/usr/local/bin/holdfast"]
CMD ["serve", "--config", "/etc/holdfast/holdfast.yaml"]
