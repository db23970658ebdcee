// SPDX-License-Identifier: GPL-2.0
/*
 * Mamori sensor: process lifecycle from scheduler tracepoints (tp_btf: typed arguments,
 * attached through BTF, so tracefs need not be mounted), outbound connections from cgroup
 * connect hooks, listening sockets from the inet_sock_set_state tracepoint.
 *
 * Collection only, no detection (detection stays in user space). Kernel structures are
 * declared here with only the fields read; CO-RE relocates their offsets against the running
 * kernel's BTF, so one object runs on any BTF kernel. Types carry an `sp_` prefix to avoid
 * clashing with kernel names.
 *
 * Wake-ups: the consumer polls with a timeout; the kernel wakes it only when `wake_bytes`
 * are queued (0 = every event), which is what keeps the cost per event low in a VM.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
} __attribute__((preserve_access_index));

typedef struct {
	unsigned int val;
} sp_kuid_t;

struct cred {
	sp_kuid_t uid;
	sp_kuid_t gid;
	sp_kuid_t euid;
	sp_kuid_t egid;
} __attribute__((preserve_access_index));

struct tty_struct {
	char name[64];
} __attribute__((preserve_access_index));

struct signal_struct {
	struct tty_struct *tty;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	struct task_struct *real_parent;
	struct mm_struct *mm;
	const struct cred *cred;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

struct super_block {
	__u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
	long long i_size;
	long long i_mtime_sec;
	unsigned int i_mtime_nsec;
	long long i_ctime_sec;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct linux_binprm {
	const char *filename;
	struct file *file;
} __attribute__((preserve_access_index));

#define SP_EXEC 1
#define SP_EXIT 2
#define SP_FORK 3
#define SP_FILE_MAX 256
#define SP_ARGS_MAX 1024

/* Must match `RawEvent` in src/collector.rs. */
struct sp_event {
	__u32 kind;
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__s32 exit_code;
	__u64 ts_ns;
	__u64 start_ns;
	__u64 parent_start_ns;
	char comm[16];
	__u32 args_len;
	__u32 args_truncated;
	char filename[SP_FILE_MAX];
	char args[SP_ARGS_MAX];
	/* Identity of the executed file (exec only): the hash cache key, so user space can
	 * find a known binary without a syscall. mtime/ctime are 0 on kernels whose inode
	 * layout differs. */
	__u64 ino;
	__u64 dev;
	__s64 size;
	__s64 mtime_sec;
	__u32 mtime_nsec;
	__u32 pad;
	__s64 ctime_sec;
	/* Effective ids, control terminal and cgroup (exec only; zero otherwise). */
	__u32 euid;
	__u32 egid;
	__u64 cgroup_id;
	char tty[32];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

#define SP_CONNECT 4
#define SP_LISTEN 5
#define SP_ACCEPT 8
#define SP_BIND 9

/* Must match `decode_net` in src/bpf.rs. */
struct sp_net_event {
	__u32 kind;
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 family;
	__u32 protocol;
	__u16 sport;
	__u16 dport;
	__u64 ts_ns;
	__u64 start_ns;
	char comm[16];
	__u8 saddr[16];
	__u8 daddr[16];
};

/* Drops by reason: 0 = ring buffer full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

const volatile __u64 wake_bytes = 0;

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);
	if (n)
		*n += 1;
}

static __always_inline void submit(struct sp_event *e)
{
	__u64 flags = 0;
	if (wake_bytes && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) < wake_bytes)
		flags = BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

static __always_inline struct sp_event *new_event(__u32 kind, struct task_struct *task)
{
	struct sp_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop(0);
		return 0;
	}
	__u64 ugid = bpf_get_current_uid_gid();
	e->kind = kind;
	e->pid = BPF_CORE_READ(task, tgid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;
	e->exit_code = 0;
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->start_ns = BPF_CORE_READ(task, start_boottime);
	e->parent_start_ns = BPF_CORE_READ(task, real_parent, start_boottime);
	e->args_len = 0;
	e->args_truncated = 0;
	e->filename[0] = 0;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return e;
}

/* tp_btf (typed, no tracefs needed): exec has replaced the image; argv is in the new mm. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *task, int old_pid, struct linux_binprm *bprm)
{
	struct sp_event *e = new_event(SP_EXEC, task);
	if (!e)
		return 0;
	bpf_probe_read_kernel_str(&e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	struct inode *ino = BPF_CORE_READ(bprm, file, f_inode);
	e->ino = BPF_CORE_READ(ino, i_ino);
	e->dev = BPF_CORE_READ(ino, i_sb, s_dev);
	e->size = BPF_CORE_READ(ino, i_size);
	e->mtime_sec = 0;
	e->mtime_nsec = 0;
	e->ctime_sec = 0;
	if (bpf_core_field_exists(ino->i_mtime_sec)) {
		e->mtime_sec = BPF_CORE_READ(ino, i_mtime_sec);
		e->mtime_nsec = BPF_CORE_READ(ino, i_mtime_nsec);
	}
	if (bpf_core_field_exists(ino->i_ctime_sec))
		e->ctime_sec = BPF_CORE_READ(ino, i_ctime_sec);
	e->euid = BPF_CORE_READ(task, cred, euid.val);
	e->egid = BPF_CORE_READ(task, cred, egid.val);
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->tty[0] = 0;
	struct tty_struct *tty = BPF_CORE_READ(task, signal, tty);
	if (tty)
		bpf_probe_read_kernel_str(&e->tty, sizeof(e->tty), &tty->name);
	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long end = BPF_CORE_READ(task, mm, arg_end);
	unsigned long len = end - start;
	if (len > SP_ARGS_MAX - 1) {
		len = SP_ARGS_MAX - 1;
		e->args_truncated = 1;
	}
	len &= (SP_ARGS_MAX - 1);
	if (bpf_probe_read_user(&e->args, len, (void *)start) == 0)
		e->args_len = len;
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	/* Threads are not processes. */
	if (BPF_CORE_READ(child, pid) != BPF_CORE_READ(child, tgid))
		return 0;
	struct sp_event *e = new_event(SP_FORK, child);
	if (!e)
		return 0;
	e->ppid = BPF_CORE_READ(parent, tgid);
	e->parent_start_ns = BPF_CORE_READ(parent, start_boottime);
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *task)
{
	if (BPF_CORE_READ(task, pid) != BPF_CORE_READ(task, tgid))
		return 0;
	struct sp_event *e = new_event(SP_EXIT, task);
	if (!e)
		return 0;
	e->exit_code = BPF_CORE_READ(task, exit_code);
	submit(e);
	return 0;
}

/* ---- network ---- */

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	unsigned short skc_family;
	__u16 skc_num;
	__be16 skc_dport;
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

static __always_inline struct sp_net_event *new_net(__u32 kind)
{
	struct sp_net_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop(0);
		return 0;
	}
	__u64 ugid = bpf_get_current_uid_gid();
	e->kind = kind;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->ppid = 0;
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->start_ns = 0;
	e->sport = 0;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	return e;
}

/* Context fields must be read one 32-bit word at a time. */
static __always_inline void copy_ip6(__u8 *dst, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	__builtin_memcpy(dst, &w0, 4);
	__builtin_memcpy(dst + 4, &w1, 4);
	__builtin_memcpy(dst + 8, &w2, 4);
	__builtin_memcpy(dst + 12, &w3, 4);
}

/* Runs in the connecting process's context for TCP and UDP; never denies (returns 1). */
SEC("cgroup/connect4")
int on_connect4(struct bpf_sock_addr *ctx)
{
	struct sp_net_event *e = new_net(SP_CONNECT);
	if (!e)
		return 1;
	e->family = 2;
	e->protocol = ctx->protocol;
	e->dport = bpf_ntohs(ctx->user_port);
	__u32 ip = ctx->user_ip4;
	__builtin_memcpy(e->daddr, &ip, 4);
	submit((struct sp_event *)e);
	return 1;
}

SEC("cgroup/connect6")
int on_connect6(struct bpf_sock_addr *ctx)
{
	struct sp_net_event *e = new_net(SP_CONNECT);
	if (!e)
		return 1;
	e->family = 10;
	e->protocol = ctx->protocol;
	e->dport = bpf_ntohs(ctx->user_port);
	copy_ip6(e->daddr, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	submit((struct sp_event *)e);
	return 1;
}

/* Who listens on a local TCP port: inbound connections complete in softirq context, where
 * the current task is whoever happened to run, so accepts are attributed to the listener. */
struct sp_owner {
	__u32 pid;
	__u32 uid;
	__u32 gid;
	char comm[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u16);
	__type(value, struct sp_owner);
} listeners SEC(".maps");

static __always_inline void sock_addrs(struct sp_net_event *e, struct sock *sk)
{
	if (e->family == 2) {
		__be32 a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->saddr, &a, 4);
		__builtin_memcpy(e->daddr, &d, 4);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

/* TCP state changes: entering LISTEN happens inside listen(2), so the current task is the
 * owner; SYN_RECV -> ESTABLISHED is an accepted inbound connection (attributed to the
 * listener); leaving LISTEN forgets the owner. */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_sock_state, struct sock *sk, int oldstate, int newstate)
{
	__u16 port = BPF_CORE_READ(sk, __sk_common.skc_num);
	/* A child socket is cloned from its listener and moves LISTEN -> SYN_RECV: only
	 * LISTEN -> CLOSE is the listener going away. */
	if (oldstate == 10 /* TCP_LISTEN */ && newstate == 7 /* TCP_CLOSE */) {
		bpf_map_delete_elem(&listeners, &port);
		return 0;
	}
	int accepted = oldstate == 3 /* TCP_SYN_RECV */ && newstate == 1 /* TCP_ESTABLISHED */;
	if (newstate != 10 && !accepted)
		return 0;
	struct sp_net_event *e = new_net(accepted ? SP_ACCEPT : SP_LISTEN);
	if (!e)
		return 0;
	e->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->protocol = 6;
	e->sport = port;
	e->dport = 0;
	sock_addrs(e, sk);
	if (accepted) {
		e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		struct sp_owner *o = bpf_map_lookup_elem(&listeners, &port);
		e->pid = o ? o->pid : 0;
		e->uid = o ? o->uid : 0;
		e->gid = o ? o->gid : 0;
		if (o)
			__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
		else
			e->comm[0] = 0;
	} else {
		struct sp_owner o = { .pid = e->pid, .uid = e->uid, .gid = e->gid };
		__builtin_memcpy(o.comm, e->comm, sizeof(o.comm));
		bpf_map_update_elem(&listeners, &port, &o, BPF_ANY);
	}
	submit((struct sp_event *)e);
	return 0;
}

/* UDP sockets bound to a port: UDP's equivalent of listening (TCP binds are reported when
 * they listen). Runs in the binding process's context; never denies. */
static __always_inline int on_post_bind(struct bpf_sock *sk, __u32 family)
{
	if (sk->protocol != 17 || sk->src_port == 0)
		return 1;
	struct sp_net_event *e = new_net(SP_BIND);
	if (!e)
		return 1;
	e->family = family;
	e->protocol = 17;
	e->sport = sk->src_port;
	if (family == 2) {
		__u32 a = sk->src_ip4;
		__builtin_memcpy(e->saddr, &a, 4);
	} else {
		copy_ip6(e->saddr, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	}
	submit((struct sp_event *)e);
	return 1;
}

SEC("cgroup/post_bind4")
int on_post_bind4(struct bpf_sock *sk)
{
	return on_post_bind(sk, 2);
}

SEC("cgroup/post_bind6")
int on_post_bind6(struct bpf_sock *sk)
{
	return on_post_bind(sk, 10);
}

/* ---- DNS: UDP port 53 payloads, copied whole (up to SP_DNS_MAX) and parsed in user space.
 * Queries leave in the sender's context (egress); answers arrive in softirq context
 * (ingress) and are attributed through the socket that sent the query. ---- */

#define SP_DNS 7
#define SP_DNS_MAX 512

/* Must match `decode_dns` in src/bpf.rs. */
struct sp_dns_event {
	__u32 kind;
	__u32 pid;
	__u32 uid;
	__u32 gid;
	__u32 family;
	__u32 answer;
	__u16 sport;
	__u16 dport;
	__u32 len;
	__u64 ts_ns;
	char comm[16];
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 payload[SP_DNS_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sp_owner);
} dns_senders SEC(".maps");

static __always_inline int on_skb(struct __sk_buff *skb, int egress)
{
	__u32 off, family;
	__u8 proto;
	if (skb->protocol == bpf_htons(0x0800)) {
		__u8 vihl;
		if (bpf_skb_load_bytes(skb, 0, &vihl, 1) || bpf_skb_load_bytes(skb, 9, &proto, 1))
			return 1;
		off = (vihl & 0xf) * 4;
		family = 2;
	} else if (skb->protocol == bpf_htons(0x86DD)) {
		if (bpf_skb_load_bytes(skb, 6, &proto, 1))
			return 1;
		off = 40;
		family = 10;
	} else {
		return 1;
	}
	if (proto != 17)
		return 1;
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, off, ports, 4))
		return 1;
	/* The filter: queries go to port 53, answers come from it. */
	if ((egress ? ports[1] : ports[0]) != bpf_htons(53))
		return 1;
	__u32 len = skb->len > off + 8 ? skb->len - off - 8 : 0;
	if (len == 0)
		return 1;
	struct sp_dns_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_drop(0);
		return 1;
	}
	e->kind = SP_DNS;
	e->family = family;
	e->answer = !egress;
	e->sport = bpf_ntohs(ports[0]);
	e->dport = bpf_ntohs(ports[1]);
	e->ts_ns = bpf_ktime_get_boot_ns();
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == 2) {
		bpf_skb_load_bytes(skb, 12, e->saddr, 4);
		bpf_skb_load_bytes(skb, 16, e->daddr, 4);
	} else {
		bpf_skb_load_bytes(skb, 8, e->saddr, 16);
		bpf_skb_load_bytes(skb, 24, e->daddr, 16);
	}
	__u64 cookie = bpf_get_socket_cookie(skb);
	if (egress) {
		__u64 ugid = bpf_get_current_uid_gid();
		e->pid = bpf_get_current_pid_tgid() >> 32;
		e->uid = (__u32)ugid;
		e->gid = ugid >> 32;
		bpf_get_current_comm(&e->comm, sizeof(e->comm));
		struct sp_owner o = { .pid = e->pid, .uid = e->uid, .gid = e->gid };
		__builtin_memcpy(o.comm, e->comm, sizeof(o.comm));
		bpf_map_update_elem(&dns_senders, &cookie, &o, BPF_ANY);
	} else {
		struct sp_owner *o = bpf_map_lookup_elem(&dns_senders, &cookie);
		e->pid = o ? o->pid : 0;
		e->uid = o ? o->uid : 0;
		e->gid = o ? o->gid : 0;
		if (o)
			__builtin_memcpy(e->comm, o->comm, sizeof(e->comm));
		else
			e->comm[0] = 0;
	}
	if (len > SP_DNS_MAX)
		len = SP_DNS_MAX;
	/* 1..SP_DNS_MAX in a form the verifier can bound (SP_DNS_MAX is a power of two). */
	__u64 n = ((__u64)(len - 1) & (SP_DNS_MAX - 1)) + 1;
	e->len = 0;
	if (bpf_skb_load_bytes(skb, off + 8, e->payload, n) == 0)
		e->len = n;
	submit((struct sp_event *)e);
	return 1;
}

SEC("cgroup_skb/egress")
int on_egress(struct __sk_buff *skb)
{
	return on_skb(skb, 1);
}

SEC("cgroup_skb/ingress")
int on_ingress(struct __sk_buff *skb)
{
	return on_skb(skb, 0);
}

/* ---- files: syscall entry/exit (x86_64 numbers), only successful changes ---- */

#define SP_FILE 6

enum sp_file_op { SP_F_CREATE = 1, SP_F_WRITE = 2, SP_F_DELETE = 3, SP_F_RENAME = 4, SP_F_CHMOD = 5, SP_F_CHOWN = 6,
	/* Not files, but the same syscall hooks: privilege changes, debugging, kernel modules. */
	SP_S_SETUID = 7, SP_S_SETGID = 8, SP_S_CAPSET = 9, SP_S_PTRACE = 10, SP_S_MODLOAD = 11, SP_S_MODUNLOAD = 12,
	/* Working directory changes: user space keeps each process's cwd to resolve relative paths. */
	SP_S_CHDIR = 13 };

struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long r10;
} __attribute__((preserve_access_index));

#define SP_PATH_MAX 256

struct sp_file_pending {
	__u32 op;
	__s32 dirfd;
	__s32 dirfd2;
	__u32 flags;
	char path[SP_PATH_MAX];
	char path2[SP_PATH_MAX];
};

/* Must match `decode_file` in src/bpf.rs. */
struct sp_file_event {
	__u32 kind;
	__u32 pid;
	__u32 uid;
	__u32 gid;
	__u32 op;
	__s32 dirfd;
	__s32 dirfd2;
	__u32 flags;
	__u64 ts_ns;
	char comm[16];
	__s64 ret;
	__u32 path_len;  /* bytes of the first path, its NUL included (0: none) */
	__u32 path2_len; /* same for the second, which follows the first */
	/* Sent with only the bytes used: most paths are far shorter than SP_PATH_MAX, and a
	 * file storm must not fill the ring buffer with padding. Sized so that the verifier can
	 * bound the variable offsets below. */
	char paths[4 * SP_PATH_MAX];
};

#define SP_FILE_HEADER 72

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sp_file_event);
} file_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct sp_file_pending);
} pending SEC(".maps");

/* Syscalls with a pending entry, system-wide: lets sys_exit (which runs for every syscall)
 * return at once in the common case where no file change is in flight. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} inflight SEC(".maps");

/* Scratch for building a pending entry (too big for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sp_file_pending);
} scratch SEC(".maps");

/* Path filter, configured by user space: longest matching prefix wins; value 1 keeps the
 * event, 0 drops it; paths that match nothing are kept. Defaults exclude /proc, /sys and
 * /dev (kernel interfaces, not files). Relative paths cannot be judged here and go to user
 * space, which applies the same rules after resolving them. */
#define SP_PREFIX_MAX 128

struct sp_prefix_key {
	__u32 prefixlen;
	char data[SP_PREFIX_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__type(key, struct sp_prefix_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} path_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sp_prefix_key);
} prefix_scratch SEC(".maps");

static __always_inline int filtered_out(const char *p, long len)
{
	if (p[0] != '/')
		return 0;
	__u32 zero = 0;
	struct sp_prefix_key *k = bpf_map_lookup_elem(&prefix_scratch, &zero);
	if (!k)
		return 0;
	__builtin_memcpy(k->data, p, SP_PREFIX_MAX);
	if (len > SP_PREFIX_MAX)
		len = SP_PREFIX_MAX;
	k->prefixlen = len * 8;
	__u8 *keep = bpf_map_lookup_elem(&path_filter, k);
	return keep && *keep == 0;
}

#define O_WRONLY 01
#define O_RDWR 02
#define O_CREAT 0100
#define O_TRUNC 01000
#define AT_FDCWD -100

/* The record of a syscall tracepoint (tracefs `events/syscalls/sys_enter_*`/`sys_exit_*`). */
struct sp_tp_enter {
	__u64 common;
	int nr;
	int pad;
	unsigned long args[6];
};

struct sp_tp_exit {
	__u64 common;
	int nr;
	int pad;
	long ret;
};

/* Argument `i` of the syscall: from the per-syscall tracepoint's record when there is one,
 * else from the registers of the raw sys_enter hook. Both are constants after inlining. */
static __always_inline long sys_arg(struct pt_regs *regs, struct sp_tp_enter *tp, int i)
{
	if (tp)
		return tp->args[i];
	switch (i) {
	case 0:
		return BPF_CORE_READ(regs, di);
	case 1:
		return BPF_CORE_READ(regs, si);
	case 2:
		return BPF_CORE_READ(regs, dx);
	default:
		return BPF_CORE_READ(regs, r10);
	}
}

static __always_inline int file_enter(struct pt_regs *regs, struct sp_tp_enter *tp, long id)
{
	__u32 op = 0;
	long a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	int dirfd = AT_FDCWD, dirfd2 = AT_FDCWD;
	const char *p1 = 0, *p2 = 0;
	__u32 flags = 0;
	switch (id) {
	case 2:   /* open(path, flags) */
	case 85:  /* creat(path, mode) */
	case 257: /* openat(dirfd, path, flags) */
		a0 = sys_arg(regs, tp, 0);
		a1 = sys_arg(regs, tp, 1);
		a2 = sys_arg(regs, tp, 2);
		if (id == 257) {
			dirfd = a0;
			p1 = (const char *)a1;
			flags = a2;
		} else if (id == 2) {
			p1 = (const char *)a0;
			flags = a1;
		} else {
			p1 = (const char *)a0;
			flags = O_CREAT | O_WRONLY | O_TRUNC;
		}
		if (!(flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)))
			return 0; /* reads are not file changes: dropped here */
		op = (flags & O_CREAT) ? SP_F_CREATE : SP_F_WRITE;
		break;
	case 87:  /* unlink(path) */
	case 263: /* unlinkat(dirfd, path, flags) */
		a0 = sys_arg(regs, tp, 0);
		a1 = sys_arg(regs, tp, 1);
		op = SP_F_DELETE;
		if (id == 263) {
			dirfd = a0;
			p1 = (const char *)a1;
		} else {
			p1 = (const char *)a0;
		}
		break;
	case 82:  /* rename(old, new) */
	case 264: /* renameat(olddirfd, old, newdirfd, new) */
	case 316: /* renameat2(olddirfd, old, newdirfd, new, flags) */
		a0 = sys_arg(regs, tp, 0);
		a1 = sys_arg(regs, tp, 1);
		a2 = sys_arg(regs, tp, 2);
		a3 = sys_arg(regs, tp, 3);
		op = SP_F_RENAME;
		if (id == 82) {
			p1 = (const char *)a0;
			p2 = (const char *)a1;
		} else {
			dirfd = a0;
			p1 = (const char *)a1;
			dirfd2 = a2;
			p2 = (const char *)a3;
		}
		break;
	case 90:  /* chmod(path, mode) */
	case 268: /* fchmodat(dirfd, path, mode) */
		a0 = sys_arg(regs, tp, 0);
		a1 = sys_arg(regs, tp, 1);
		a2 = sys_arg(regs, tp, 2);
		op = SP_F_CHMOD;
		if (id == 268) {
			dirfd = a0;
			p1 = (const char *)a1;
			flags = a2;
		} else {
			p1 = (const char *)a0;
			flags = a1;
		}
		break;
	case 92:  /* chown(path, uid, gid) */
	case 94:  /* lchown */
	case 260: /* fchownat(dirfd, path, uid, gid, flags) */
		a0 = sys_arg(regs, tp, 0);
		a1 = sys_arg(regs, tp, 1);
		op = SP_F_CHOWN;
		if (id == 260) {
			dirfd = a0;
			p1 = (const char *)a1;
		} else {
			p1 = (const char *)a0;
		}
		break;
	case 105: /* setuid(uid) */
	case 113: /* setreuid(ruid, euid) */
	case 117: /* setresuid(ruid, euid, suid) */
	case 106: /* setgid */
	case 114: /* setregid */
	case 119: /* setresgid */
		a0 = sys_arg(regs, tp, 0);
		a1 = sys_arg(regs, tp, 1);
		a2 = sys_arg(regs, tp, 2);
		op = (id == 105 || id == 113 || id == 117) ? SP_S_SETUID : SP_S_SETGID;
		dirfd = a0;
		dirfd2 = (id == 105 || id == 106) ? -1 : a1;
		flags = (id == 117 || id == 119) ? a2 : (__u32)-1;
		break;
	case 126: /* capset(header, data) */
		op = SP_S_CAPSET;
		break;
	case 101: /* ptrace(request, pid, ...): attaching only */
		a0 = sys_arg(regs, tp, 0);
		a1 = sys_arg(regs, tp, 1);
		if (a0 != 16 /* PTRACE_ATTACH */ && a0 != 0x4206 /* PTRACE_SEIZE */)
			return 0;
		op = SP_S_PTRACE;
		dirfd = a0;
		dirfd2 = a1;
		break;
	case 175: /* init_module(image, len, params) */
	case 313: /* finit_module(fd, params, flags) */
		a0 = sys_arg(regs, tp, 0);
		op = SP_S_MODLOAD;
		dirfd = id == 313 ? a0 : -1;
		break;
	case 80: /* chdir(path) */
		p1 = (const char *)sys_arg(regs, tp, 0);
		op = SP_S_CHDIR;
		break;
	case 81: /* fchdir(fd) */
		dirfd = sys_arg(regs, tp, 0);
		op = SP_S_CHDIR;
		break;
	case 176: /* delete_module(name, flags) */
		a0 = sys_arg(regs, tp, 0);
		op = SP_S_MODUNLOAD;
		p1 = (const char *)a0;
		break;
	default:
		return 0;
	}
	__u32 zero = 0;
	struct sp_file_pending *pe = bpf_map_lookup_elem(&scratch, &zero);
	if (!pe)
		return 0;
	pe->op = op;
	pe->dirfd = dirfd;
	pe->dirfd2 = dirfd2;
	pe->flags = flags;
	pe->path[0] = 0;
	pe->path2[0] = 0;
	int drop = 0;
	if (op <= SP_F_CHOWN) {
		long n = bpf_probe_read_user_str(&pe->path, sizeof(pe->path), p1);
		if (n <= 0)
			return 0;
		drop = filtered_out(pe->path, n - 1);
		if (drop && op != SP_F_RENAME)
			return 0;
	} else if (p1) {
		bpf_probe_read_user_str(&pe->path, sizeof(pe->path), p1);
	}
	if (p2) {
		long n2 = bpf_probe_read_user_str(&pe->path2, sizeof(pe->path2), p2);
		/* A rename is kept if either side is. */
		if (drop && (n2 <= 0 || filtered_out(pe->path2, n2 - 1)))
			return 0;
	}
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	if (bpf_map_update_elem(&pending, &tid, pe, BPF_NOEXIST) == 0) {
		__s64 *n = bpf_map_lookup_elem(&inflight, &zero);
		if (n)
			__sync_fetch_and_add(n, 1);
	} else {
		bpf_map_update_elem(&pending, &tid, pe, BPF_ANY);
	}
	return 0;
}

static __always_inline int file_exit(long ret)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&inflight, &zero);
	if (!n || *n <= 0)
		return 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct sp_file_pending *pe = bpf_map_lookup_elem(&pending, &tid);
	if (!pe)
		return 0;
	__sync_fetch_and_add(n, -1);
	/* Failed file changes changed nothing; failed privilege or module calls are attempts
	 * worth reporting. */
	if (ret < 0 && (pe->op <= SP_F_CHOWN || pe->op == SP_S_CHDIR)) {
		bpf_map_delete_elem(&pending, &tid);
		return 0;
	}
	struct sp_file_event *e = bpf_map_lookup_elem(&file_scratch, &zero);
	if (!e) {
		bpf_map_delete_elem(&pending, &tid);
		return 0;
	}
	__u64 ugid = bpf_get_current_uid_gid();
	e->kind = SP_FILE;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;
	e->op = pe->op;
	e->dirfd = pe->dirfd;
	e->dirfd2 = pe->dirfd2;
	e->flags = pe->flags;
	e->ts_ns = bpf_ktime_get_boot_ns();
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
	e->ret = ret;
	long n1 = bpf_probe_read_kernel_str(e->paths, SP_PATH_MAX, pe->path);
	__u64 off = n1 > 0 ? (__u64)n1 & (2 * SP_PATH_MAX - 1) : 0;
	long n2 = 0;
	if (pe->path2[0])
		n2 = bpf_probe_read_kernel_str(e->paths + off, SP_PATH_MAX, pe->path2);
	__u64 len2 = n2 > 0 ? (__u64)n2 & (2 * SP_PATH_MAX - 1) : 0;
	e->path_len = off;
	e->path2_len = len2;
	bpf_map_delete_elem(&pending, &tid);
	__u64 flags = 0;
	if (wake_bytes && bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) < wake_bytes)
		flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, SP_FILE_HEADER + off + len2, flags))
		count_drop(0);
	return 0;
}

/* Two ways to hook the syscalls above. The raw sys_enter/sys_exit hooks run for every
 * syscall of every process; the per-syscall tracepoints run only for these syscalls (the
 * kernel tests a bitmap first), but need tracefs. User space loads one set or the other. */
SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	return file_enter(regs, 0, id);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	return file_exit(ret);
}

#define SP_SYSCALL(name, nr)                                                 \
	SEC("tracepoint/syscalls/sys_enter_" #name)                          \
	int enter_##name(struct sp_tp_enter *c) { return file_enter(0, c, nr); } \
	SEC("tracepoint/syscalls/sys_exit_" #name)                           \
	int exit_##name(struct sp_tp_exit *c) { return file_exit(c->ret); }

SP_SYSCALL(open, 2)
SP_SYSCALL(creat, 85)
SP_SYSCALL(openat, 257)
SP_SYSCALL(unlink, 87)
SP_SYSCALL(unlinkat, 263)
SP_SYSCALL(rename, 82)
SP_SYSCALL(renameat, 264)
SP_SYSCALL(renameat2, 316)
SP_SYSCALL(chmod, 90)
SP_SYSCALL(fchmodat, 268)
SP_SYSCALL(chown, 92)
SP_SYSCALL(lchown, 94)
SP_SYSCALL(fchownat, 260)
SP_SYSCALL(setuid, 105)
SP_SYSCALL(setreuid, 113)
SP_SYSCALL(setresuid, 117)
SP_SYSCALL(setgid, 106)
SP_SYSCALL(setregid, 114)
SP_SYSCALL(setresgid, 119)
SP_SYSCALL(capset, 126)
SP_SYSCALL(ptrace, 101)
SP_SYSCALL(init_module, 175)
SP_SYSCALL(finit_module, 313)
SP_SYSCALL(delete_module, 176)
SP_SYSCALL(chdir, 80)
SP_SYSCALL(fchdir, 81)
