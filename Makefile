# make test  - install what is missing, build everything, run every test
# make demo  - boot a guest and show its console
SWIFT ?= swift
export PATH := /opt/swift/usr/bin:$(PATH)

APT_PACKAGES = gcc libc6-dev make busybox-static cpio qemu-system-x86 qemu-utils seabios acpica-tools zlib1g-dev \
	syslinux syslinux-common mtools dosfstools fdisk grub-pc-bin xorriso isc-dhcp-client ipxe-qemu

.PHONY: all build test demo deps bench clean guest-kernels fuzz-smoke

all: build

deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The Debian kernels (bzImage and vmlinux; amd64 and i386) the loader and boot tests use,
# cached in .build/guests.
# guests/debian/build.sh comes with the emulator work; until it is there (or when the
# download fails) the tests that need the kernel say SKIPPED.
guest-kernels: deps
	@if [ -f guests/debian/build.sh ]; then sh guests/debian/build.sh || echo "warning: guests/debian/build.sh failed; kernel-dependent tests will be skipped"; fi
	@if [ -f guests/debian/build.sh ]; then sh guests/debian/build.sh --only-i386 || echo "warning: guests/debian/build.sh --only-i386 failed; the i386 Linux boot test will be skipped"; fi
	@if [ -f guests/debian/build.sh ]; then sh guests/debian/build.sh --variant net || echo "warning: guests/debian/build.sh --variant net failed; the local-interface guest test will be skipped"; fi
	@if [ -f guests/debian/build.sh ]; then sh guests/debian/build.sh --variant vsock || echo "warning: guests/debian/build.sh --variant vsock failed; the vsock guest test will be skipped"; fi
	@if [ -f guests/debian/build.sh ]; then sh guests/debian/build.sh --variant v3 || echo "warning: guests/debian/build.sh --variant v3 failed; the v3 guest test will be skipped"; fi

build:
	$(SWIFT) build

test: deps guest-kernels
	$(SWIFT) build --build-tests
	$(SWIFT) test
	$(MAKE) fuzz-smoke

# Each libFuzzer harness (fuzz/harnesses) over its seed corpus plus 500 mutations; the long
# runs are bench/fuzz.sh. See docs/fuzzing.md.
fuzz-smoke:
	./fuzz/smoke.sh

demo: deps
	$(SWIFT) build
	./scripts/demo.sh

bench: deps
	$(SWIFT) build -c release
	./bench/run-all.sh

clean:
	rm -rf .build build
