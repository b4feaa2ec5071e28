# redirect-agent: every target a developer or CI needs. `make demo` and `make test` install their
# own dependencies first, so each works alone on a fresh machine.
SWIFT      ?= swift
CLANG      ?= clang
ARCH       := $(shell uname -m)
BPF_SRC    := bpf/redirect.bpf.c
BPF_OBJ    := bpf/redirect.bpf.o
BPF_HDRS   := $(wildcard bpf/*.h) Sources/CShim/include/redirect_abi.h
# Lab only: another CNI's programs, for the coexistence tests.
OTHER_CNI  := Lab/bpf/other_cni.bpf.o
BPF_CFLAGS  = -O2 -g -Wall -target bpf -D__TARGET_ARCH_x86 -I/usr/include/$(ARCH)-linux-gnu
BIN        := .build/debug

.PHONY: deps bpf build test kernel-matrix demo demo-iptables demo-ebpf demo-nftables bench clean proto

deps:
	@bash scripts/deps.sh

bpf: $(BPF_OBJ) $(OTHER_CNI)

# Compiled with BTF (-g) for bpftool's typed dumps; never by SwiftPM.
$(BPF_OBJ): $(BPF_SRC) $(BPF_HDRS)
	$(CLANG) $(BPF_CFLAGS) -Ibpf -ISources/CShim/include -c $(BPF_SRC) -o $@

$(OTHER_CNI): Lab/bpf/other_cni.bpf.c
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

build: bpf
	$(SWIFT) build

test: deps build
	bash scripts/test.sh

# The BPF and eBPF lab suites again on Linux 6.1 and 6.12 in VMs (CI runs it after `make test`).
kernel-matrix: deps build
	swift build --build-tests
	bash scripts/kernel-matrix.sh

demo: deps build
	$(BIN)/redirect-lab demo

demo-iptables: deps build
	$(BIN)/redirect-lab demo --dataplane iptables

demo-ebpf: deps build
	$(BIN)/redirect-lab demo --dataplane ebpf

demo-nftables: deps build
	$(BIN)/redirect-lab demo --dataplane nftables

# Release binaries (agent, proxy, apps, lab): what a node runs, and what the report says it measured.
bench: deps bpf
	$(SWIFT) build -c release
	.build/release/redirect-lab bench

clean:
	rm -f $(BPF_OBJ) $(OTHER_CNI)
	$(SWIFT) package clean
	-$(BIN)/redirect-lab cleanup 2>/dev/null

# Regenerates Sources/ZDS/zds.pb.swift (committed; CI never builds the plugin).
# Needs protoc (Debian protobuf-compiler) and protoc-gen-swift built from swift-protobuf.
PROTOC_GEN_SWIFT ?= protoc-gen-swift
proto:
	protoc --plugin=protoc-gen-swift=$(PROTOC_GEN_SWIFT) --swift_out=Visibility=Public:Sources/ZDS -Iproto proto/zds.proto
