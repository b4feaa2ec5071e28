#define _GNU_SOURCE
#include "cshim.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>

int cshim_setns(int fd, int nstype) { return setns(fd, nstype); }
int cshim_clone_newnet(void) { return CLONE_NEWNET; }
ssize_t cshim_splice(int fd_in, int fd_out, size_t len) {
    return splice(fd_in, NULL, fd_out, NULL, len, SPLICE_F_MOVE | SPLICE_F_MORE);
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
int cshim_sock_seqpacket(void) { return SOCK_SEQPACKET; }
int cshim_sock_cloexec(void) { return SOCK_CLOEXEC; }
