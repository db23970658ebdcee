#!/usr/bin/env bash
# Installs (or names) what building and testing Mamori needs beyond Rust: the BPF compiler,
# libbpf's C dependencies, nftables (isolation), iproute2 and curl (tests), aiosmtpd, poppler
# and openssl (SOC tests). Sourced by ./run and ./test.
need_pkgs=()
command -v clang >/dev/null 2>&1 || need_pkgs+=(clang)
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
[ -e /usr/include/gelf.h ] || need_pkgs+=(libelf-dev)
[ -e /usr/include/zlib.h ] || need_pkgs+=(zlib1g-dev)
[ -e /usr/include/linux/bpf.h ] || need_pkgs+=(linux-libc-dev)
# Response: isolation is an nftables table; the namespace tests use iproute2 and curl.
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
# SOC: the notification test talks to a real SMTP server (aiosmtpd); the report tests read
# the PDFs back with poppler and check webhook signatures with openssl.
[ -e /usr/lib/python3/dist-packages/aiosmtpd ] || need_pkgs+=(python3-aiosmtpd)
command -v pdftotext >/dev/null 2>&1 || need_pkgs+=(poppler-utils)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing: ${need_pkgs[*]}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >&2 || {
            apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >&2
        } || { echo "error: could not install ${need_pkgs[*]}" >&2; exit 2; }
    else
        echo "error: building Mamori's eBPF sensor needs these packages: ${need_pkgs[*]}" >&2
        echo "install them with: sudo apt-get install -y ${need_pkgs[*]}" >&2
        exit 2
    fi
fi
