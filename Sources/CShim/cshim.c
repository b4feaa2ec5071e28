#define _GNU_SOURCE
#include "cshim.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <bpf/btf.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>

int cshim_setns(int fd, int nstype) { return setns(fd, nstype); }
int cshim_clone_newnet(void) { return CLONE_NEWNET; }
int cshim_unshare_net(void) { return unshare(CLONE_NEWNET); }
int cshim_clone_newcgroup(void) { return CLONE_NEWCGROUP; }
ssize_t cshim_splice(int fd_in, int fd_out, size_t len) {
    return splice(fd_in, NULL, fd_out, NULL, len, SPLICE_F_MOVE);
}
int cshim_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) { return posix_spawn_file_actions_addclosefrom_np(actions, from); }
int cshim_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }
int cshim_pidfd_send_signal(int pidfd, int sig) { return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0); }
int cshim_peer_pidfd(int fd) {
    int pidfd = -1;
    socklen_t len = sizeof(pidfd);
    return getsockopt(fd, SOL_SOCKET, 77 /* SO_PEERPIDFD, Linux 6.5 */, &pidfd, &len) == 0 ? pidfd : -1;
}
int cshim_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }
int cshim_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }
int cshim_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, sig); }
int cshim_original_dst4(int fd, struct sockaddr_in *out) {
    socklen_t len = sizeof(*out);
    return getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len);
}
int cshim_original_dst6(int fd, struct sockaddr_in6 *out) {
    socklen_t len = sizeof(*out);
    return getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len);
}
int cshim_set_transparent(int fd, int ipv6) {
    int one = 1;
    if (ipv6) return setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
    return setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
}
int cshim_set_mark(int fd, uint32_t mark) { return setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)); }
int cshim_get_mark(int fd, uint32_t *mark) {
    socklen_t len = sizeof(*mark);
    return getsockopt(fd, SOL_SOCKET, SO_MARK, mark, &len);
}
int cshim_errno(void) { return errno; }
int cshim_gettid(void) { return (int)syscall(SYS_gettid); }
int cshim_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }
int cshim_sock_stream(void) { return SOCK_STREAM; }
int cshim_sock_dgram(void) { return SOCK_DGRAM; }
int cshim_sock_seqpacket(void) { return SOCK_SEQPACKET; }
int cshim_sock_cloexec(void) { return SOCK_CLOEXEC; }

/* ---- libbpf ---- */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <linux/magic.h>

static void (*cshim_log_sink)(int, const char *);

static int cshim_libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args) {
    if (!cshim_log_sink) return 0;
    char line[1024];
    vsnprintf(line, sizeof(line), fmt, args);
    cshim_log_sink((int)level, line);
    return 0;
}

void cshim_libbpf_set_logger(void (*sink)(int, const char *)) {
    cshim_log_sink = sink;
    libbpf_set_print(cshim_libbpf_print);
}

struct bpf_object *cshim_bpf_object_open(const char *path, const char *pin_root) {
    LIBBPF_OPTS(bpf_object_open_opts, opts, .pin_root_path = pin_root);
    struct bpf_object *obj = bpf_object__open_file(path, &opts);
    return libbpf_get_error(obj) ? NULL : obj;
}

static struct bpf_tc_hook cshim_hook(int ifindex, enum bpf_tc_attach_point point) {
    struct bpf_tc_hook h;
    memset(&h, 0, sizeof(h));
    h.sz = sizeof(h);
    h.ifindex = ifindex;
    h.attach_point = point;
    return h;
}

int cshim_tc_hook_create(int ifindex) {
    struct bpf_tc_hook h = cshim_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS);
    return bpf_tc_hook_create(&h);
}

int cshim_tc_hook_destroy(int ifindex) {
    struct bpf_tc_hook h = cshim_hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS);
    return bpf_tc_hook_destroy(&h);
}

int cshim_tc_attach(int ifindex, int ingress, int prog_fd, uint32_t handle, uint32_t priority, int replace) {
    struct bpf_tc_hook h = cshim_hook(ifindex, ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_opts, o, .prog_fd = prog_fd, .handle = handle, .priority = priority,
                .flags = replace ? BPF_TC_F_REPLACE : 0);
    return bpf_tc_attach(&h, &o);
}

int cshim_tc_detach(int ifindex, int ingress, uint32_t handle, uint32_t priority) {
    struct bpf_tc_hook h = cshim_hook(ifindex, ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_opts, o, .handle = handle, .priority = priority);
    return bpf_tc_detach(&h, &o);
}

int cshim_tc_query(int ifindex, int ingress, uint32_t handle, uint32_t priority, uint32_t *prog_id) {
    struct bpf_tc_hook h = cshim_hook(ifindex, ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_opts, o, .handle = handle, .priority = priority);
    int err = bpf_tc_query(&h, &o);
    if (!err) *prog_id = o.prog_id;
    return err;
}

int cshim_link_create_sk_lookup(int prog_fd, int netns_fd) {
    return bpf_link_create(prog_fd, netns_fd, BPF_SK_LOOKUP, NULL);
}

int cshim_link_create_tcx(int prog_fd, int ifindex, int ingress) {
    /* libbpf 1.1 predates tcx: pass the raw attach types (BPF_TCX_INGRESS 46, BPF_TCX_EGRESS 47). */
    return bpf_link_create(prog_fd, ifindex, (enum bpf_attach_type)(ingress ? 46 : 47), NULL);
}

/* Linux 6.4's netfilter programs, by number: libbpf 1.1 and the 6.1 uapi headers predate them. */
#define CSHIM_PROG_TYPE_NETFILTER 32
#define CSHIM_ATTACH_NETFILTER 45
#define CSHIM_LINK_TYPE_TCX 11

int cshim_program_set_netfilter(struct bpf_program *prog) {
    int err = bpf_program__set_type(prog, (enum bpf_prog_type)CSHIM_PROG_TYPE_NETFILTER);
    return err ? err : bpf_program__set_expected_attach_type(prog, (enum bpf_attach_type)CSHIM_ATTACH_NETFILTER);
}

int cshim_probe_netfilter_program(void) {
    struct bpf_insn insns[] = {
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    LIBBPF_OPTS(bpf_prog_load_opts, o, .expected_attach_type = (enum bpf_attach_type)CSHIM_ATTACH_NETFILTER);
    int fd = bpf_prog_load((enum bpf_prog_type)CSHIM_PROG_TYPE_NETFILTER, "ra_probe_nf", "GPL", insns, 2, &o);
    if (fd < 0) return fd;
    close(fd);
    return 0;
}

int cshim_link_create_netfilter(int prog_fd, uint32_t pf, uint32_t hooknum, int32_t priority) {
    /* bpf_attr.link_create as Linux 6.4 lays it out: prog_fd, target_fd, attach_type, flags,
     * then netfilter { pf, hooknum, priority, flags }. */
    uint32_t attr[16];
    memset(attr, 0, sizeof(attr));
    attr[0] = (uint32_t)prog_fd;
    attr[2] = CSHIM_ATTACH_NETFILTER;
    attr[4] = pf;
    attr[5] = hooknum;
    attr[6] = (uint32_t)priority;
    int fd = (int)syscall(__NR_bpf, BPF_LINK_CREATE, attr, sizeof(attr));
    return fd < 0 ? -errno : fd;
}

int cshim_probe_lsm_program(void) {
    struct btf *vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux) return -ENOENT;
    int hook = btf__find_by_name_kind(vmlinux, "bpf_lsm_socket_create", BTF_KIND_FUNC);
    btf__free(vmlinux);
    if (hook < 0) return -ENOENT;
    struct bpf_insn insns[] = {
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 0 },
        { .code = BPF_JMP | BPF_EXIT },
    };
    LIBBPF_OPTS(bpf_prog_load_opts, o, .expected_attach_type = BPF_LSM_MAC, .attach_btf_id = (uint32_t)hook);
    int fd = bpf_prog_load(BPF_PROG_TYPE_LSM, "ra_probe_lsm", "GPL", insns, 2, &o);
    if (fd < 0) return fd;
    close(fd);
    return 0;
}

int cshim_link_create_lsm(int prog_fd) {
    int fd = bpf_raw_tracepoint_open(NULL, prog_fd);
    return fd < 0 ? -errno : fd;
}

int cshim_link_tcx_ifindex(int link_fd, uint32_t *ifindex) {
    /* bpf_link_info as Linux 6.6 lays it out (the 6.1 uapi headers predate tcx): type, id,
     * prog_id, then the 8-byte aligned union, whose tcx member starts with ifindex. */
    uint64_t info[32];
    memset(info, 0, sizeof(info));
    uint32_t len = sizeof(info);
    int err = bpf_obj_get_info_by_fd(link_fd, info, &len);
    if (err) return err;
    const uint32_t *w = (const uint32_t *)info;
    if (w[0] != CSHIM_LINK_TYPE_TCX) return -EINVAL;
    *ifindex = w[4];
    return 0;
}

int cshim_prog_test_run_skb(int prog_fd, const void *data, uint32_t size, void *out, uint32_t *out_size,
                            uint32_t mark, uint32_t ifindex, uint32_t *retval, uint32_t *mark_out) {
    struct __sk_buff ctx_in, ctx_out;
    memset(&ctx_in, 0, sizeof(ctx_in));
    memset(&ctx_out, 0, sizeof(ctx_out));
    ctx_in.mark = mark;
    ctx_in.ifindex = ifindex;
    LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = data, .data_size_in = size, .data_out = out,
                .data_size_out = *out_size, .ctx_in = &ctx_in, .ctx_size_in = sizeof(ctx_in),
                .ctx_out = &ctx_out, .ctx_size_out = sizeof(ctx_out), .repeat = 1);
    int err = bpf_prog_test_run_opts(prog_fd, &o);
    if (err) return err;
    *out_size = o.data_size_out;
    *retval = o.retval;
    *mark_out = ctx_out.mark;
    return 0;
}

int cshim_prog_id(int prog_fd, uint32_t *id) {
    struct bpf_prog_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    int err = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
    if (!err) *id = info.id;
    return err;
}

int cshim_link_prog_id(int link_fd, uint32_t *id) {
    struct bpf_link_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    int err = bpf_obj_get_info_by_fd(link_fd, &info, &len);
    if (!err) *id = info.prog_id;
    return err;
}

int cshim_prog_stats(int prog_fd, uint64_t *run_time_ns, uint64_t *run_cnt) {
    struct bpf_prog_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    int err = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
    if (!err) { *run_time_ns = info.run_time_ns; *run_cnt = info.run_cnt; }
    return err;
}

int cshim_prog_tag(int prog_fd, uint8_t tag[8]) {
    struct bpf_prog_info info;
    uint32_t len = sizeof(info);
    memset(&info, 0, sizeof(info));
    int err = bpf_obj_get_info_by_fd(prog_fd, &info, &len);
    if (!err) memcpy(tag, info.tag, 8);
    return err;
}

int cshim_is_bpffs(const char *path) {
    struct statfs st;
    if (statfs(path, &st) != 0) return 0;
    return st.f_type == BPF_FS_MAGIC;
}

int cshim_mount_bpffs(const char *path) { return mount("bpf", path, "bpf", 0, NULL); }
int cshim_umount(const char *path) { return umount2(path, MNT_DETACH); }
int cshim_num_possible_cpus(void) { return libbpf_num_possible_cpus(); }

int cshim_peer_pid(int fd, int32_t *pid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    int r = getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
    if (r == 0) *pid = cred.pid;
    return r;
}

ssize_t cshim_send_with_fd(int sock, const void *data, size_t len, int fd) {
    struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
    char control[CMSG_SPACE(sizeof(int))];
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(control, 0, sizeof(control));
        msg.msg_control = control;
        msg.msg_controllen = sizeof(control);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

ssize_t cshim_recv_with_fd(int sock, void *buf, size_t len, int *fd) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    char control[CMSG_SPACE(sizeof(int) * 4)];
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    *fd = -1;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *fds = (int *)CMSG_DATA(c);
            for (int i = 0; i < count; i++) {
                if (*fd < 0) *fd = fds[i]; else close(fds[i]);
            }
        }
    }
    return n;
}
