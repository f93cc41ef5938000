#!/usr/bin/env bash
# Builds the real Kubernetes API server the tests under tests/integration/kubernetes/ start:
# kube-apiserver and kube-controller-manager from Debian's `kubernetes` source package (1.20.2,
# vendored, builds offline with Debian's Go), plus kubectl from Debian's `kubernetes-client` (an
# unpacked .deb: faster than a third Go build, and no clash with another installed kubectl) and
# etcd from Debian. The binaries live in a cache outside the repository (never commit them);
# with all of them already there, this does nothing. Prints the cache directory last.
#   AZ_AGENT_KUBE_CACHE  where the binaries go (default /var/cache/az-agent/kubernetes-1.20.2,
#                        else ~/.cache/az-agent/kubernetes-1.20.2 when /var/cache is not writable)
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

version=1.20.2
cache=${AZ_AGENT_KUBE_CACHE:-}
if [ -z "$cache" ]; then
  cache=/var/cache/az-agent/kubernetes-$version
  mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] \
    || cache=${XDG_CACHE_HOME:-$HOME/.cache}/az-agent/kubernetes-$version
fi
mkdir -p "$cache"

have_all() {
  for b in kube-apiserver kube-controller-manager kubectl; do [ -x "$cache/$b" ] || return 1; done
  command -v etcd >/dev/null || [ -x /usr/bin/etcd ]
}
if have_all; then echo "$cache"; exit 0; fi

apt_packages=()
command -v go >/dev/null || apt_packages+=(golang-go)
command -v rsync >/dev/null || apt_packages+=(rsync)
[ -x /usr/bin/etcd ] || apt_packages+=(etcd-server)
if [ ${#apt_packages[@]} -gt 0 ]; then
  echo "installing Debian packages: ${apt_packages[*]}" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
    "${apt_packages[@]}" >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/az-agent-kube-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

if [ ! -x "$cache/kubectl" ]; then
  echo "unpacking kubectl from Debian's kubernetes-client" >&2
  apt-get -o APT::Sandbox::User=root download -qq kubernetes-client >&2
  dpkg-deb -x kubernetes-client_*.deb client
  install -m 0755 client/usr/bin/kubectl "$cache/kubectl.tmp"
  mv "$cache/kubectl.tmp" "$cache/kubectl"
fi

if [ ! -x "$cache/kube-apiserver" ] || [ ! -x "$cache/kube-controller-manager" ]; then
  # Source packages through a private sources list (the machine's Debian sources as deb-src), so
  # the system's apt configuration stays untouched.
  echo "fetching Debian's kubernetes $version source package" >&2
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sources=src.sources  # deb822, Debian 12's default
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > $sources
  else
    sources=src.list
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > $sources
  fi
  mkdir -p lists/partial
  apt_src=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$PWD/$sources"
           -o Dir::Etc::SourceParts=- -o "Dir::State::Lists=$PWD/lists")
  apt-get "${apt_src[@]}" update -qq >&2
  apt-get "${apt_src[@]}" source -qq --download-only kubernetes >&2
  tar xf kubernetes_*.orig.tar.gz
  cd kubernetes-$version
  mkdir -p .go/src/k8s.io && ln -s ../../.. .go/src/k8s.io/kubernetes
  for what in kube-apiserver kube-controller-manager; do
    [ -x "$cache/$what" ] && continue
    echo "building $what (several minutes)" >&2
    GOPATH=$PWD/.go CGO_ENABLED=0 make WHAT=cmd/$what >&2
    install -m 0755 "_output/bin/$what" "$cache/$what.tmp"
    mv "$cache/$what.tmp" "$cache/$what"
  done
fi

have_all
echo "$cache"
