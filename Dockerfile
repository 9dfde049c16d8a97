# walhook, and the example receiver (docker build --target receiver).
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/walhook ./cmd/walhook \
 && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/receiver ./examples/receiver

FROM gcr.io/distroless/static-debian12:nonroot AS receiver
COPY --from=build /out/receiver /receiver
ENTRYPOINT ["/receiver"]

# The default (last) stage: walhook itself.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/walhook /walhook
ENTRYPOINT ["/walhook"]
CMD ["run", "-c", "/etc/walhook/walhook.yaml"]
