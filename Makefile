# inpod: `make demo` and `make test` work on a fresh Debian 12 host (root); see README.md.
SHELL := /bin/bash
BPF_SRCS := $(wildcard bpf/*.bpf.c)
BPF_OBJS := $(patsubst bpf/%.bpf.c,build/%.bpf.o,$(BPF_SRCS))
BPF_SKELS := $(patsubst bpf/%.bpf.c,build/%.skel.h,$(BPF_SRCS))
BPF_HDRS := $(wildcard bpf/include/*.h)
ADDON := addon/build/Release/inpod_native.node
DEB_PKGS := clang llvm libbpf-dev libelf-dev zlib1g-dev bpftool iproute2 iptables nftables \
	containernetworking-plugins util-linux procps python3 python3-h2 openssl tshark socat iperf3 nginx-light wrk gcc \
	libjansson-dev libnghttp2-dev libasan8 libubsan1
ARCH := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')

.PHONY: all deps build bpf addon ts test test-sanitized demo clean bench bench-tools plugin deploy-check

all: build

# Installs what is missing; quiet and quick when everything is present.
deps: node_modules/.package-lock.json
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

build: deps bpf addon ts bench-tools plugin

build/vmlinux.h:
	@mkdir -p build
	@test -r /sys/kernel/btf/vmlinux || { echo "kernel BTF missing (/sys/kernel/btf/vmlinux): need CONFIG_DEBUG_INFO_BTF=y" >&2; exit 1; }
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

build/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS) build/vmlinux.h
	clang -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) -Ibuild -Ibpf/include -c $< -o $@

build/%.skel.h: build/%.bpf.o
	bpftool gen skeleton $< name inpod_$* > $@.tmp && mv $@.tmp $@

bpf: $(BPF_OBJS) $(BPF_SKELS)

$(ADDON): $(BPF_SKELS) $(wildcard addon/src/*) addon/binding.gyp
	cd addon && ../node_modules/.bin/node-gyp rebuild --nodedir=$$(dirname $$(dirname $$(command -v node))) --loglevel=error >/dev/null

# The addon again with AddressSanitizer and UndefinedBehaviorSanitizer (any report aborts), from
# its own copy of the sources in build/asan/ (node-gyp builds beside binding.gyp; the links give
# the copy binding.gyp's ../bpf/include and ../build).
ASAN_ADDON := build/asan/addon/build/Release/inpod_native.node
$(ASAN_ADDON): $(BPF_SKELS) $(wildcard addon/src/*) addon/binding.gyp
	rm -rf build/asan && mkdir -p build/asan/addon build/asan/bpf
	cp -r addon/src addon/binding.gyp build/asan/addon/
	ln -s ../../../bpf/include build/asan/bpf/include
	ln -s .. build/asan/build
	cd build/asan/addon && CXXFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g -O1" \
		LDFLAGS="-fsanitize=address,undefined" ../../../node_modules/.bin/node-gyp rebuild \
		--nodedir=$$(dirname $$(dirname $$(command -v node))) --loglevel=error >/dev/null

addon: $(ADDON)

# The benchmark's native forwarder, connection-rate and fixed-rate latency clients (plain C, no libraries).
build/inpod-fwd: bench/fwd.c
	@mkdir -p build
	gcc -O2 -Wall -o $@ $<

build/inpod-connrate: bench/connrate.c bench/client.h
	@mkdir -p build
	gcc -O2 -Wall -pthread -o $@ $<

build/inpod-latency: bench/latency.c bench/client.h
	@mkdir -p build
	gcc -O2 -Wall -o $@ $<

bench-tools: build/inpod-fwd build/inpod-connrate build/inpod-latency

# The CNI plugin the agent copies to the host: static (glibc and jansson's libjansson.a), so the
# host runs it with nothing from the image and none of its own libraries (ARCHITECTURE.md, "CNI").
build/inpod-cni: cni/inpod-cni.c cni/input.h
	@mkdir -p build
	gcc -O2 -Wall -Wextra -Werror -static -s -o $@ cni/inpod-cni.c -ljansson -lm

plugin: build/inpod-cni

ts:
	node_modules/.bin/tsc -p tsconfig.json
	@chmod +x dist/cli/main.js dist/cni/bin.js 2>/dev/null || true

# The suites that carry HBONE through a real proxy, run a second time on the native byte path
# (--byte-path native, ts/proxy/hbone/native.ts): both paths under the same tests.
NATIVE_PATH_TESTS = test/netns/proxy.test.ts test/netns/proxy-dualstack.test.ts test/netns/twonode.test.ts \
	test/netns/istiod.test.ts test/netns/waypoint.test.ts test/netns/rollout.test.ts test/netns/telemetry.test.ts \
	test/netns/ztunnel.test.ts test/netns/localhost-example.test.ts test/netns/ipv6-proxy.test.ts \
	test/security/hbone.test.ts test/security/authz.test.ts test/security/policy-update.test.ts test/security/sandbox.test.ts \
	test/security/connect-authority.test.ts

# the tests are type-checked with the code they test (vitest runs them without checking types)
test: build
	node_modules/.bin/tsc -p tsconfig.test.json
	node_modules/.bin/vitest run
	INPOD_BYTE_PATH=native node_modules/.bin/vitest run $(NATIVE_PATH_TESTS)
	$(MAKE) --no-print-directory test-sanitized

# The native HBONE engine parses what a peer sends in C++: its tests, the attacks on it and the
# random-frame peers run again with the sanitized addon, so a memory error a peer's input reaches
# fails the suite even where it would not have crashed; then proxies on the native byte path
# (SANITIZED_PROXY_TESTS: the quicker native-path suites whose timers leave room for the
# sanitizers' slowdown, and that start no tool such as tshark which the preload would reach too).
# Leak checking is off: node frees little at exit.
SANITIZED_TESTS := test/native/hbone-engine.test.ts test/security/hbone-native.test.ts test/security/hbone-native-fuzz.test.ts
SANITIZED_PROXY_TESTS := test/security/authz.test.ts test/security/policy-update.test.ts test/security/connect-authority.test.ts \
	test/netns/ipv6-proxy.test.ts test/netns/waypoint.test.ts test/netns/telemetry.test.ts test/netns/ztunnel.test.ts \
	test/netns/localhost-example.test.ts
SANITIZE := LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 INPOD_ADDON=$(abspath $(ASAN_ADDON))
test-sanitized: build $(ASAN_ADDON)
	$(SANITIZE) node_modules/.bin/vitest run $(SANITIZED_TESTS)
	$(SANITIZE) INPOD_BYTE_PATH=native node_modules/.bin/vitest run $(SANITIZED_PROXY_TESTS)

# deploy/ rendered offline by `kubectl kustomize` (default and with components/shared-ca), every
# object validated against the Kubernetes schemas; test/deploy is also part of `make test`.
deploy-check: deps
	node_modules/.bin/vitest run test/deploy

demo: build
	node dist/cli/main.js demo

bench: build
	node dist/cli/main.js bench

clean:
	rm -rf build dist addon/build
