# For users who build with Docker (or Podman/Buildah). CI builds the same image without a
# daemon: hack/image.sh (OCI layout, umoci). Build: docker build -t seapath-operator .
FROM docker.io/library/rust:1.89-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang pkg-config librbd-dev librados-dev libvirt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin seapath-operator --bin kubectl-seapath \
 && strip target/release/seapath-operator target/release/kubectl-seapath

# qemu-img's rbd driver is a module of qemu-block-extra, whose other modules pull in gluster,
# iSCSI, NFS, SSH and curl libraries: only that module is kept (same Debian release and mirror
# as the runtime stage's qemu-utils, so the same QEMU build).
FROM docker.io/library/debian:bookworm-slim AS qemu-rbd
RUN apt-get update \
 && apt-get install -y --no-install-recommends qemu-block-extra \
 && mkdir /out && cp --parents /usr/lib/*/qemu/block-rbd.so /out/

FROM docker.io/library/debian:bookworm-slim
# Runtime libraries: librbd/librados (Ceph client), libvirt (client library); qemu-img and its
# rbd module, which the controller runs to import qcow2 sources.
RUN apt-get update \
 && apt-get install -y --no-install-recommends librbd1 librados2 libvirt0 ca-certificates qemu-utils \
 && rm -rf /var/lib/apt/lists/*
COPY --from=qemu-rbd /out/ /
# qemu-img lists rbd among its formats only when the module loads.
RUN qemu-img --help | grep -qw rbd
COPY --from=build /src/target/release/seapath-operator /usr/bin/seapath-operator
COPY --from=build /src/target/release/kubectl-seapath /usr/bin/kubectl-seapath
# The controller runs as this user; the chart runs the agent as root (libvirt's system socket).
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/bin/seapath-operator"]
CMD ["controller"]
