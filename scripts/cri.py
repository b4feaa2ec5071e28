#!/usr/bin/env python3
"""The lab's CRI client: the kubelet's sandbox calls to a container runtime over its gRPC socket
(containerd's CRI plugin), and the pause image the runtime's sandboxes run. Needs grpcio and
grpcio-tools (the lab's tools venv); the messages come from cri/runtime.proto, a subset of CRI.

  pause-image --out TAR --ref REF      builds the sandbox image (a static pause) as a docker archive
  version --socket S                   the runtime's name and CRI version
  run --socket S --name N --namespace NS --uid U [--attempt A] [--log-dir D] [--cgroup-parent P]
                                       RunPodSandbox, then its status: {"id", "ips", "netns", "pid"}
  stop --socket S --id ID              StopPodSandbox (the runtime's CNI DEL)
  remove --socket S --id ID            RemovePodSandbox
Errors print {"error": ..., "code": ...} and exit 1.
"""
import platform, argparse, hashlib, importlib, io, json, os, shutil, subprocess, sys, tarfile, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def messages():
    """runtime_pb2, generated from cri/runtime.proto into a cache beside the venv on first use."""
    out = os.path.join(sys.prefix, "ra-cri-gen")
    proto = os.path.join(HERE, "cri", "runtime.proto")
    stamp = os.path.join(out, "source.sha256")
    digest = hashlib.sha256(open(proto, "rb").read()).hexdigest()
    if not os.path.exists(stamp) or open(stamp).read() != digest:
        os.makedirs(out, exist_ok=True)
        from grpc_tools import protoc
        if protoc.main(["protoc", "-I" + os.path.dirname(proto), "--python_out=" + out, proto]) != 0:
            raise SystemExit("protoc failed on " + proto)
        open(stamp, "w").write(digest)
    sys.path.insert(0, out)
    return importlib.import_module("runtime_pb2")


def call(socket, method, request, response_type):
    import grpc
    with grpc.insecure_channel("unix://" + socket) as channel:
        rpc = channel.unary_unary("/runtime.v1.RuntimeService/" + method,
                                  request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=response_type.FromString)
        return rpc(request, timeout=60)


def pause_image(a):
    with tempfile.TemporaryDirectory() as tmp:
        binary = os.path.join(tmp, "pause")
        cc = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
        subprocess.run([cc, "-static", "-Os", "-o", binary, os.path.join(HERE, "cri", "pause.c")], check=True)
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as t:
            info = t.gettarinfo(binary, arcname="pause")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(binary, "rb") as f:
                t.addfile(info, f)
        layer_bytes = layer.getvalue()
        diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
        arch = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(platform.machine(), platform.machine())
        config = json.dumps({"architecture": arch, "os": "linux",
                             "config": {"Entrypoint": ["/pause"]},
                             "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
        manifest = json.dumps([{"Config": "config.json", "RepoTags": [a.ref], "Layers": ["layer.tar"]}]).encode()
        with tarfile.open(a.out, mode="w") as t:
            for name, data in (("layer.tar", layer_bytes), ("config.json", config), ("manifest.json", manifest)):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    print(json.dumps({"image": a.ref, "layer": diff_id}))


def version(a):
    pb = messages()
    r = call(a.socket, "Version", pb.VersionRequest(version="v1"), pb.VersionResponse)
    print(json.dumps({"runtime": r.runtime_name, "version": r.runtime_version, "api": r.runtime_api_version}))


def run(a):
    pb = messages()
    meta = pb.PodSandboxMetadata(name=a.name, uid=a.uid, namespace=a.namespace, attempt=a.attempt)
    config = pb.PodSandboxConfig(metadata=meta, hostname=a.name, log_directory=a.log_dir or "",
                                 linux=pb.LinuxPodSandboxConfig(cgroup_parent=a.cgroup_parent or ""))
    sandbox = call(a.socket, "RunPodSandbox", pb.RunPodSandboxRequest(config=config), pb.RunPodSandboxResponse).pod_sandbox_id
    status = call(a.socket, "PodSandboxStatus", pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox, verbose=True),
                  pb.PodSandboxStatusResponse)
    info = json.loads(status.info.get("info", "{}"))
    spaces = info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
    netns = next((n.get("path", "") for n in spaces if n.get("type") == "network"), "")
    ips = [status.status.network.ip] + [p.ip for p in status.status.network.additional_ips]
    print(json.dumps({"id": sandbox, "ips": [ip for ip in ips if ip], "netns": netns, "pid": info.get("pid", 0)}))


def stop(a):
    pb = messages()
    call(a.socket, "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=a.id), pb.StopPodSandboxResponse)
    print(json.dumps({"stopped": a.id}))


def remove(a):
    pb = messages()
    call(a.socket, "RemovePodSandbox", pb.RemovePodSandboxRequest(pod_sandbox_id=a.id), pb.RemovePodSandboxResponse)
    print(json.dumps({"removed": a.id}))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("pause-image")
    pi.add_argument("--out", required=True)
    pi.add_argument("--ref", required=True)
    for name in ("version", "run", "stop", "remove"):
        s = sub.add_parser(name)
        s.add_argument("--socket", required=True)
        if name == "run":
            s.add_argument("--name", required=True)
            s.add_argument("--namespace", required=True)
            s.add_argument("--uid", required=True)
            s.add_argument("--attempt", type=int, default=0)
            s.add_argument("--log-dir")
            s.add_argument("--cgroup-parent")
        if name in ("stop", "remove"):
            s.add_argument("--id", required=True)
    a = p.parse_args()
    try:
        {"pause-image": pause_image, "version": version, "run": run, "stop": stop, "remove": remove}[a.cmd](a)
    except Exception as e:  # a gRPC status or an OS error: one JSON line for the lab
        code = getattr(e, "code", lambda: None)()
        details = getattr(e, "details", lambda: str(e))()
        print(json.dumps({"error": details, "code": str(code) if code else None}))
        sys.exit(1)


if __name__ == "__main__":
    main()
