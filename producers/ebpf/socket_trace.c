// tracetap socket tracer: socket data at the syscall layer and TCP lifecycle, tracepoints only.
//
// Kernel struct offsets (OFF_*) are not taken from headers: the loader reads them from this
// kernel's BTF and passes them as -D defines. User-ABI layouts (iovec, msghdr, sockaddr) are
// fixed by the syscall ABI. Filters run here, in the kernel, through maps the loader fills.

#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/bpf_perf_event.h>

// tcp:tcp_send_reset's format names this enum, which the (older) installed headers lack; only
// its size (an int) matters to the generated args struct.
enum sk_rst_reason { SK_RST_REASON_PLACEHOLDER_ };

#define AF_INET 2
#define AF_INET6 10
#define S_IFMT_ 00170000
#define S_IFSOCK_ 0140000

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define ROLE_UNKNOWN 0
#define ROLE_CLIENT 1
#define ROLE_SERVER 2

// Syscall ids, mirrored by producers/ebpf/events.py SYSCALLS.
#define SYS_READ 0
#define SYS_WRITE 1
#define SYS_READV 2
#define SYS_WRITEV 3
#define SYS_RECVFROM 4
#define SYS_SENDTO 5
#define SYS_RECVMSG 6
#define SYS_SENDMSG 7
#define SYS_RECVMMSG 8
#define SYS_SENDMMSG 9
#define SYS_SSL_READ 10   // TLS plaintext: OpenSSL's SSL_read[_ex] returned it (uprobes, below)
#define SYS_SSL_WRITE 11  // ... SSL_write[_ex] took it

// Lifecycle kinds, mirrored by producers/ebpf/events.py.
#define LC_STATE 1
#define LC_RETRANSMIT 2
#define LC_RESET_SENT 3
#define LC_RESET_RECEIVED 4
#define LC_RTT 5
#define LC_ACCEPT 6

#define RTT_SAMPLE_INTERVAL_NS 1000000000ULL

// Counters (per CPU), mirrored by producers/ebpf/events.py COUNTERS.
#define CNT_DATA_EVENTS 0
#define CNT_DATA_LOST 1
#define CNT_LIFECYCLE_LOST 2
#define CNT_FILTERED 3
#define CNT_SHED_EVENTS 4
#define CNT_SHED_REQUESTS 5
#define CNT_LOSS_MARKERS_LOST 6
#define CNT_UNKNOWN_PROTOCOL 7  // events sent with byte counts only: their socket speaks no protocol the core parses
#define CNT_CONTINUATIONS 8  // events sent with byte counts only: they continue an HTTP/1 or Redis message past its head
#define CNT_TLS_CIPHERTEXT 9  // syscalls not sent: ciphertext of a socket whose plaintext the OpenSSL probes send
#define CNT_TLS_UNTIED 10  // SSL calls not sent: no syscall told their socket (a memory BIO, or data OpenSSL had read before)
#define CNT_MAX 11

// Shedding (the agent's CPU budget): a flow is captured while the hash of its client endpoint is below
// the threshold user space sets; SAMPLE_ALL captures everything. The decision is taken when a request
// starts and holds until the next one, so a conversation is never cut mid-exchange.
#define SAMPLE_ALL 0xFFFFFFFFu
#define DIR_NONE 2

struct data_args {
    u64 enter_ns;
    u64 sk;
    u64 buf;        // user buffer, or a user iovec array when iov = 1
    u64 addr;       // user sockaddr (sendto / recvfrom / msg_name), or 0
    u64 socket_ino;
    u32 fd;
    u32 seq;
    u8 syscall;
    u8 iov;
    u8 has_seq;
    u8 direction;
    u8 tls;         // an SSL call's plaintext (SYS_SSL_*)
};

struct sock_info {
    u64 socket_ino;
    u32 pid;
    u32 tid;
    char comm[16];
    u8 role;
};

struct thread_trace {
    u64 trace_id;
    u64 server_sk;   // the server socket the request came in on
    u8 responded;    // the thread has written (part of) its response
};

struct data_event {
    u64 enter_ns;
    u64 exit_ns;
    u64 socket_ino;
    u64 netns;
    u64 trace_id;
    u64 cgroup_id;
    u32 pid;
    u32 tid;
    u32 fd;
    s32 bytes;
    u32 seq;
    u32 payload_len;
    u16 family;
    u16 lport;
    u16 rport;
    u8 direction;
    u8 syscall;
    u8 protocol;
    u8 role;
    u8 has_seq;
    u8 loss_generation;  // the socket's count of lost events (mod 256): a change tells user space to resync
    u32 sample_threshold;  // the shedding threshold this message was captured under
    u32 socket_seq;        // 1, 2, 3 ... per socket as captured (0: none): user space restores the order batches lose
    u8 tls;                // TLS plaintext from the OpenSSL probes
    u8 reserved[3];
    u8 laddr[16];
    u8 raddr[16];
    char comm[16];
    u8 payload[PAYLOAD_MAX];
};

// What sock_flow.payload holds (see may_be_parsed).
#define PAYLOAD_UNDECIDED 0
#define PAYLOAD_SHIP 1
#define PAYLOAD_COUNTS_ONLY 2
#define TOO_SHORT_TO_TELL 16  // as the core's _TOO_SHORT_TO_TELL (tracetap/assembly.py)
#define PAYLOAD_HEADS 3  // HTTP/1: payload on each message's first PAYLOAD_CAPTURE bytes only (below)
#define PAYLOAD_HEADS_RESP 4  // Redis: the same, its messages told by RESP type bytes

// What the kernel keeps per socket for shedding and loss: one lookup per syscall.
struct sock_flow {
    u64 socket_ino;   // the socket it was made for: a struct sock freed and reused (UDP: no close event) starts afresh
    u32 threshold;    // in force since the current request started
    u8 request_dir;   // the direction requests travel on this socket
    u8 last_dir;      // of the last captured-or-shed message, DIR_NONE at first
    u8 shed;          // the current exchange is not captured
    u8 loss_generation;
    u8 sent;          // an event of the current exchange reached user space (a loss then leaves it open there)
    u8 payload;       // PAYLOAD_UNDECIDED until the socket's first bytes are seen, then SHIP, HEADS or COUNTS_ONLY
    u8 data_dir;      // the direction of its last syscall that moved bytes, DIR_NONE at first
    u8 unclaimed;     // directions (1 << dir) whose first bytes no parser could claim while undecided
    u8 tls;           // the OpenSSL probes send this socket's plaintext: its ciphertext syscalls are not sent
    u16 msg_bytes;    // bytes moved in data_dir since its current message started (saturating)
    u64 seq;          // the socket_seq of its last captured event (64 bits: a 32-bit atomic add cannot return here)
};

struct lifecycle_event {
    u64 ts_ns;
    u64 socket_ino;
    u64 netns;
    u64 bytes_acked;
    u64 bytes_received;
    u32 total_retrans;
    u32 srtt_us;
    u32 pid;
    u32 tid;
    s32 error;
    u16 family;
    u16 lport;
    u16 rport;
    u8 kind;
    u8 oldstate;
    u8 newstate;
    u8 role;
    u8 protocol;
    u8 loss_generation;  // a close: its socket's, so that what a lost marker left open is dropped, not reported cut
    u8 laddr[16];
    u8 raddr[16];
    char comm[16];
};

BPF_RINGBUF_OUTPUT(data_events, DATA_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(lifecycle_events, LIFECYCLE_RINGBUF_PAGES);
// Header-only data events (no bytes) that carry a socket's new loss generation as soon as an event of
// it is lost, so user space drops the broken exchange even if the socket then goes quiet.
BPF_RINGBUF_OUTPUT(loss_markers, 64);

// Wake the reader in batches, not per event (a wakeup costs more than the event): each CPU forces one
// after WAKEUP_BYTES it wrote since its last, and writes without one otherwise; the reader also drains
// the ring on its poll timeout (50 ms), so a quiet socket's last message is not held back.
#define RB_NO_WAKEUP 1
#define RB_FORCE_WAKEUP 2
#define WAKEUP_BYTES (DATA_RINGBUF_PAGES * 4096 / 16)
BPF_PERCPU_ARRAY(unsignalled_bytes, u64, 1);

static __always_inline u64 wakeup_flag(u32 size) {
    u32 zero = 0;
    u64 *pending = unsignalled_bytes.lookup(&zero);
    if (!pending) return 0;  // 0: the kernel's own choice
    *pending += size;
    if (*pending < WAKEUP_BYTES) return RB_NO_WAKEUP;
    *pending = 0;
    return RB_FORCE_WAKEUP;
}

// Data events are written into a per-CPU batch, and a batch is one ring-buffer record: user space takes
// BATCH_EVENTS events (or BATCH_BYTES) per callback instead of one. A batch goes out when full, when its
// first event is BATCH_NS old at the next append, or from the flush_stale perf-event program that runs
// FLUSH_HZ times a second on every CPU, so a quiet socket's last message waits at most BATCH_NS plus a tick.
// Batches from different CPUs arrive out of order: socket_seq lets user space put each socket back in order.
#define BATCH_EVENTS 32          // a power of two
#define COMPILER_BARRIER() asm volatile("" ::: "memory")  // the busy flag is set before, cleared after the writes it guards
#define BATCH_BYTES 16384        // flush once this much is used (a power of two)
#ifndef BATCH_NS
#define BATCH_NS 20000000ULL
#endif
#define EVENT_MAX (__builtin_offsetof(struct data_event, payload) + PAYLOAD_MAX)
#define BATCH_CAP (BATCH_BYTES + EVENT_MAX + PAYLOAD_MAX + 8)  // slack for gather_iovecs' bound
struct batch {
    u64 first_ns;             // exit time of its first event
    u32 busy;                 // a program on this CPU is writing it (an interrupting one must not)
    u32 reserved;
    u64 sks[BATCH_EVENTS];    // each event's socket and offset, to mark their exchanges broken if the batch is lost
    u16 offsets[BATCH_EVENTS];
    u8 generations[BATCH_EVENTS];
    u32 count;                // from here on the ring record: count, used, then the events, each 8-byte aligned
    u32 used;
    u8 data[BATCH_CAP];
};
BPF_PERCPU_ARRAY(batches, struct batch, 1);
// Each CPU's batch's first_ns while it holds events (0: empty), for user space to read: a CPU gone idle runs no
// flush_stale (its cpu-clock event ticks only while the CPU runs something), so the reader wakes it with a getppid()
// from a thread moved there (the kick below) when its batch is due.
BPF_PERCPU_ARRAY(batch_pending, u64, 1);
// A batch of one, for the rare call that finds its CPU's batch busy (an interrupted writer).
struct single {
    u32 count;
    u32 used;
    struct data_event e;
    u8 slack[PAYLOAD_MAX];  // gather_iovecs' bound
};
BPF_PERCPU_ARRAY(singles, struct single, 1);

BPF_HASH(active_data, u64, struct data_args, 16384);
BPF_TABLE("lru_hash", u64, struct sock_info, sock_infos, 65536);
BPF_TABLE("lru_hash", u64, u8, sock_last_dir, 65536);
BPF_TABLE("lru_hash", u64, struct thread_trace, thread_traces, 65536);
BPF_TABLE("lru_hash", u64, u64, rtt_last_ns, 65536);
BPF_PERCPU_ARRAY(counters, u64, CNT_MAX);
BPF_ARRAY(trace_seq, u64, 1);
BPF_TABLE("lru_hash", u64, struct sock_flow, sock_flows, 65536);
BPF_ARRAY(sampling, u32, 1);  // the shedding threshold, set by user space (SAMPLE_ALL at load)

// Filters, filled by the loader.
BPF_HASH(excluded_pids, u32, u8, 1024);
BPF_HASH(excluded_ports, u16, u8, 1024);
BPF_HASH(included_netns, u32, u8, 1024);  // in force with FILTER_NETNS
struct comm_key { char comm[16]; };
BPF_HASH(excluded_comms, struct comm_key, u8, 256);  // in force with FILTER_COMMS
BPF_HASH(included_cgroups, u64, u8, 1024);           // in force with FILTER_CGROUPS
BPF_ARRAY(filter_flags, u32, 1);
#define FILTER_NETNS 1
#define FILTER_COMMS 2
#define FILTER_CGROUPS 4

#define FILTER_ARMED 8  // set last, once every filter map is filled: until then nothing is captured

static __always_inline u32 filter_bits(void) {
    u32 zero = 0;
    u32 *flags = filter_flags.lookup(&zero);
    return flags ? *flags : 0;
}

// Filters that need process context (syscalls): the calling process's comm and cgroup.
static __always_inline int process_filtered(void) {
    u32 bits = filter_bits();
    if (!(bits & FILTER_ARMED)) return 1;  // the tracepoints are attached before the agent's own pid is excluded
    if (bits & FILTER_COMMS) {
        struct comm_key key = {};
        bpf_get_current_comm(&key.comm, sizeof(key.comm));
        if (excluded_comms.lookup(&key)) return 1;
    }
    if (bits & FILTER_CGROUPS) {
        u64 cgroup = bpf_get_current_cgroup_id();
        if (!included_cgroups.lookup(&cgroup)) return 1;
    }
    return 0;
}

static __always_inline void count(u32 which) {
    u64 *c = counters.lookup(&which);
    if (c) (*c)++;
}

static __always_inline void count_n(u32 which, u64 n) {
    u64 *c = counters.lookup(&which);
    if (c) *c += n;
}

static __always_inline void *read_ptr(void *base, u64 off) {
    void *p = 0;
    bpf_probe_read_kernel(&p, sizeof(p), base + off);
    return p;
}

// fd of the current task -> struct sock *, or 0 if the fd is not an inet socket.
static __always_inline void *fd_to_sock(u32 fd, u64 *socket_ino) {
    void *task = (void *)bpf_get_current_task();
    void *files = read_ptr(task, OFF_TASK_FILES);
    if (!files) return 0;
    void *fdt = read_ptr(files, OFF_FILES_FDT);
    if (!fdt) return 0;
    u32 max_fds = 0;
    bpf_probe_read_kernel(&max_fds, sizeof(max_fds), fdt + OFF_FDT_MAX_FDS);
    if (fd >= max_fds) return 0;
    void *fd_array = read_ptr(fdt, OFF_FDT_FD);
    if (!fd_array) return 0;
    void *file = read_ptr(fd_array, (u64)fd * sizeof(void *));
    if (!file) return 0;
    void *inode = read_ptr(file, OFF_FILE_F_INODE);
    if (!inode) return 0;
    u16 mode = 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), inode + OFF_INODE_I_MODE);
    if ((mode & S_IFMT_) != S_IFSOCK_) return 0;
    bpf_probe_read_kernel(socket_ino, sizeof(*socket_ino), inode + OFF_INODE_I_INO);
    void *socket = read_ptr(file, OFF_FILE_PRIVATE_DATA);
    if (!socket) return 0;
    void *sk = read_ptr(socket, OFF_SOCKET_SK);
    if (!sk) return 0;
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), sk + OFF_SKC_FAMILY);
    if (family != AF_INET && family != AF_INET6) return 0;
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + OFF_SK_PROTOCOL);
    if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP) return 0;
    return sk;
}

static __always_inline u32 sock_netns(void *sk) {
    void *net = read_ptr(sk, OFF_SKC_NET);
    u32 inum = 0;
    if (net) bpf_probe_read_kernel(&inum, sizeof(inum), net + OFF_NET_NS_INUM);
    return inum;
}

static __always_inline u16 sock_lport(void *sk) {
    u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), sk + OFF_SKC_NUM);
    return port;
}

static __always_inline u16 sock_rport(void *sk) {
    u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), sk + OFF_SKC_DPORT);
    return ntohs(port);
}

// Everything excluded by the loader's filters is dropped here, before any copying.
static __always_inline int filtered(void *sk) {
    if (!(filter_bits() & FILTER_ARMED)) return 1;
    u16 lport = sock_lport(sk), rport = sock_rport(sk);
    if (excluded_ports.lookup(&lport) || excluded_ports.lookup(&rport)) return 1;
    if (filter_bits() & FILTER_NETNS) {
        u32 ns = sock_netns(sk);
        if (!included_netns.lookup(&ns)) return 1;
    }
    return 0;
}

static __always_inline void fill_addrs(void *sk, u16 family, u8 *laddr, u8 *raddr) {
    if (family == AF_INET) {
        bpf_probe_read_kernel(laddr, 4, sk + OFF_SKC_RCV_SADDR);
        bpf_probe_read_kernel(raddr, 4, sk + OFF_SKC_DADDR);
    } else {
        bpf_probe_read_kernel(laddr, 16, sk + OFF_SKC_V6_RCV_SADDR);
        bpf_probe_read_kernel(raddr, 16, sk + OFF_SKC_V6_DADDR);
    }
}

// murmur3's finalizer over the client's address (its last 4 bytes: IPv4, or IPv4-mapped IPv6) and port.
// Both ends of a connection on one node hash the same endpoint, and DNAT (a Service's ClusterIP) keeps it.
static __always_inline u32 client_hash(void *sk, u8 role) {
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), sk + OFF_SKC_FAMILY);
    u16 lport = sock_lport(sk), rport = sock_rport(sk);
    int local = role == ROLE_CLIENT || (role == ROLE_UNKNOWN && lport > rport);  // unknown: the ephemeral (higher) port
    u32 addr = 0;
    u64 off = family == AF_INET ? (local ? OFF_SKC_RCV_SADDR : OFF_SKC_DADDR)
                                : (local ? OFF_SKC_V6_RCV_SADDR : OFF_SKC_V6_DADDR) + 12;
    bpf_probe_read_kernel(&addr, sizeof(addr), sk + off);
    u32 h = addr ^ ((u32)(local ? lport : rport) * 0x9E3779B1u);
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

static __always_inline u8 sock_role(u64 sk) {
    struct sock_info *info = sock_infos.lookup(&sk);
    return info ? info->role : ROLE_UNKNOWN;
}

// 1 if this syscall's bytes are shed. A new request (a message in the socket's request direction after
// one in the other) takes the decision for its whole exchange, under the threshold in force now.
static __always_inline int shed(void *sk, u64 socket_ino, u8 direction, u8 tls) {
    u64 key = (u64)sk;
    struct sock_flow *f = sock_flows.lookup(&key);
    if (!f || f->socket_ino != socket_ino) {
        u8 role = sock_role(key);
        struct sock_flow fresh = {};
        fresh.socket_ino = socket_ino;
        // A client writes requests, a server reads them; unknown (sockets older than the agent, UDP):
        // the first message seen is taken as a request.
        fresh.request_dir = role == ROLE_CLIENT ? DIR_EGRESS : role == ROLE_SERVER ? DIR_INGRESS : direction;
        fresh.last_dir = DIR_NONE;
        fresh.data_dir = DIR_NONE;
        sock_flows.update(&key, &fresh);
        f = sock_flows.lookup(&key);
        if (!f) return 0;
    }
    if (tls && !f->tls) {
        // Its first plaintext: what its handshake's ciphertext decided no longer holds, the plaintext settles it.
        f->tls = 1;
        f->payload = PAYLOAD_UNDECIDED;
        f->unclaimed = 0;
        f->data_dir = DIR_NONE;
    } else if (!tls && f->tls) {
        count(CNT_TLS_CIPHERTEXT);  // an alert, a renegotiation, a close_notify outside the probed calls
        return 1;
    }
    if (direction != f->last_dir) {
        int first = f->last_dir == DIR_NONE;
        f->last_dir = direction;
        if (first || direction == f->request_dir) {
            u32 zero = 0;
            u32 *threshold = sampling.lookup(&zero);
            u32 t = threshold ? *threshold : SAMPLE_ALL;
            f->threshold = t;
            f->sent = 0;
            f->shed = t != SAMPLE_ALL && client_hash(sk, sock_role(key)) >= t;
            if (f->shed) count(CNT_SHED_REQUESTS);
        }
    }
    if (f->shed) count(CNT_SHED_EVENTS);
    return f->shed;
}

// TLS plaintext: uprobes on OpenSSL's SSL_read/SSL_write[_ex] (every libssl the node's processes map; the loader
// attaches them). Nothing is read from OpenSSL's structs: the call's entry remembers its buffer in a per-thread map,
// the read/write syscalls OpenSSL makes inside the call tell its socket (fd, tuple and the TCP sequence number of
// the call's first ciphertext byte, which is what the NICs see) and are not sent themselves, and the return sends
// the plaintext as a data event of that socket. An SSL call that makes no syscall (data OpenSSL already read)
// uses the socket the SSL object's last call was tied to.
struct ssl_call {
    u64 ssl;        // the SSL *, as the process's key for its connection
    u64 buf;        // the plaintext buffer
    u64 done;       // SSL_read_ex / SSL_write_ex: where they store the byte count; 0: the return value is it
    u64 enter_ns;
    u64 sk;         // told by the first syscall inside the call
    u64 socket_ino;
    u32 fd;
    u32 seq;
    u8 has_seq;
    u8 direction;
};
BPF_HASH(ssl_calls, u64, struct ssl_call, 16384);
struct ssl_key { u64 ssl; u64 pid; };
struct ssl_socket { u64 socket_ino; u32 fd; };
BPF_TABLE("lru_hash", struct ssl_key, struct ssl_socket, ssl_sockets, 65536);

static __always_inline void tie_ssl_call(struct ssl_call *call, void *sk, u64 socket_ino, u32 fd, u8 direction) {
    if (call->sk) return;
    call->sk = (u64)sk;
    call->socket_ino = socket_ino;
    call->fd = fd;
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + OFF_SK_PROTOCOL);
    if (protocol == IPPROTO_TCP && direction == call->direction) {
        bpf_probe_read_kernel(&call->seq, sizeof(call->seq), sk + (direction == DIR_EGRESS ? OFF_TCP_WRITE_SEQ : OFF_TCP_COPIED_SEQ));
        call->has_seq = 1;
    }
}

static __always_inline int enter_data(u32 fd, u64 buf, u64 addr, u8 syscall, u8 direction, u8 iov) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32;
    if (excluded_pids.lookup(&pid) || process_filtered()) return 0;
    struct data_args a = {};
    void *sk = fd_to_sock(fd, &a.socket_ino);
    if (!sk) return 0;
    struct ssl_call *call = ssl_calls.lookup(&pid_tgid);
    if (call) {  // OpenSSL's own syscall inside SSL_read/SSL_write: it tells the call's socket, the call sends the plaintext
        tie_ssl_call(call, sk, a.socket_ino, fd, direction);
        count(CNT_TLS_CIPHERTEXT);
        return 0;
    }
    if (filtered(sk)) {
        count(CNT_FILTERED);
        return 0;
    }
    if (shed(sk, a.socket_ino, direction, 0)) return 0;
    a.enter_ns = bpf_ktime_get_ns();
    a.sk = (u64)sk;
    a.buf = buf;
    a.addr = addr;
    a.fd = fd;
    a.syscall = syscall;
    a.direction = direction;
    a.iov = iov;
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + OFF_SK_PROTOCOL);
    if (protocol == IPPROTO_TCP) {
        // The sequence number of this call's first byte, read before the kernel moves it.
        bpf_probe_read_kernel(&a.seq, sizeof(a.seq), sk + (direction == DIR_EGRESS ? OFF_TCP_WRITE_SEQ : OFF_TCP_COPIED_SEQ));
        a.has_seq = 1;
    }
    active_data.update(&pid_tgid, &a);
    return 0;
}

// Thread-scoped trace id (DeepFlow's syscall_trace_id): a new inbound message on a server socket
// starts a trace for the thread; its calls on other sockets carry it until it responds.
static __always_inline u64 thread_trace_id(u64 pid_tgid, u64 sk, u8 role, u8 direction) {
    u8 *last = sock_last_dir.lookup(&sk);
    u8 previous = last ? *last : DIR_EGRESS;
    sock_last_dir.update(&sk, &direction);
    struct thread_trace *t = thread_traces.lookup(&pid_tgid);
    if (role == ROLE_SERVER) {
        if (direction == DIR_INGRESS) {
            if (previous == DIR_EGRESS || !t || t->server_sk != sk) {
                u32 zero = 0;
                u64 *seq = trace_seq.lookup(&zero);
                if (!seq) return 0;
                struct thread_trace fresh = {};
                fresh.trace_id = __sync_fetch_and_add(seq, 1) + 1;
                fresh.server_sk = sk;
                thread_traces.update(&pid_tgid, &fresh);
                return fresh.trace_id;
            }
            return t->trace_id;
        }
        if (t && t->server_sk == sk) {
            t->responded = 1;
            return t->trace_id;
        }
        return 0;
    }
    if (t && !t->responded) return t->trace_id;
    return 0;
}

static __always_inline void read_sockaddr(u64 addr, u16 *family, u16 *port, u8 *ip) {
    u16 fam = 0;
    bpf_probe_read_user(&fam, sizeof(fam), (void *)addr);
    if (fam == AF_INET) {
        bpf_probe_read_user(port, 2, (void *)addr + 2);
        bpf_probe_read_user(ip, 4, (void *)addr + 4);
        *family = fam;
    } else if (fam == AF_INET6) {
        bpf_probe_read_user(port, 2, (void *)addr + 2);
        bpf_probe_read_user(ip, 16, (void *)addr + 8);
        *family = fam;
    }
    *port = ntohs(*port);
}

// Payload only for sockets the core can parse. The core picks a socket's protocol from its first captured
// bytes, once (tracetap/protocols: detect); a socket whose first bytes it cannot place gives no spans, so
// its later payloads would be copied for nothing: they go out as byte counts (lifecycle and network
// metrics keep them). The check below accepts everything any parser's detect accepts, on any port (a
// test holds it to the parsers: tests/e2e/test_agent_payload_inference.py); agent.unknown_protocol_payloads
// (PAYLOAD_ALL_PROTOCOLS) ships every payload.
// (the PAYLOAD_* decisions are defined with struct sock_flow)
static __always_inline u8 http2_flags(u8 type) {  // the flags each HTTP/2 frame type defines (RFC 9113 section 6)
    switch (type) {
    case 0: return 0x09;  // DATA: END_STREAM, PADDED
    case 1: return 0x2D;  // HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY
    case 4: case 6: return 0x01;  // SETTINGS, PING: ACK
    case 5: return 0x0C;  // PUSH_PROMISE: END_HEADERS, PADDED
    case 9: return 0x04;  // CONTINUATION: END_HEADERS
    default: return 0;
    }
}

static __always_inline int may_be_parsed(u8 *h, u32 n, u16 l4) {
    if (l4 == IPPROTO_UDP)  // DNS, the one UDP protocol: a query header (QR 0, opcode 0) with one question
        return n >= 12 && !(h[2] & 0xF8) && h[4] == 0 && h[5] == 1;
    if (n >= 3 && h[0] == 0x16 && h[1] == 0x03 && h[2] <= 0x04) return 0;  // a TLS handshake record: ciphertext follows
    u8 c = h[0];
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '*')
        return 1;  // HTTP/1 methods, PostgreSQL Query and Parse, Redis arrays and inline commands
    if (n >= 5 && h[3] <= 1) return 1;  // MySQL: a 3-byte length, then sequence 0 (greeting, command) or 1 (login)
    if (n >= 8 && h[4] == 0 && h[5] == 3 && h[6] == 0 && h[7] == 0) return 1;  // PostgreSQL startup (protocol 3.0)
    if (n >= 8 && h[0] == 0 && h[1] == 0 && h[2] == 0 && h[3] == 8 && h[4] == 0x04 && h[5] == 0xD2) return 1;  // SSL/GSS request
    if (n >= 14 && h[0] < 7 && h[4] == 0 && h[6] == 0) return 1;  // Kafka: size < 100 MiB, api key < 256, version 0-20
    if (n >= 8 && !(h[4] & 0xF8) && h[6] == 0 && h[7] == 1) return 1;  // DNS over TCP: 2-byte length, then a query header
    if (n >= 9 && !(h[5] & 0x80) && h[3] <= 9 && !(h[4] & ~http2_flags(h[3]))) return 1;  // an HTTP/2 frame (mid-connection)
    return 0;
}

// Payload only on the head of each message, for the text protocols whose messages the core reads by their head
// (HTTP/1: the start line and headers; Redis: the command or the reply's first line): a message's syscalls
// carry their payload until PAYLOAD_CAPTURE bytes of it have gone by, however its writer or reader cut it, and
// its later ones (a body, the rest of a long value) go out as byte counts. A message starts at a syscall in the
// other direction than the socket's last one, or at one whose first bytes start a message of the socket's
// protocol (pipelined requests and responses). The core reads the head and counts the rest (tracetap/assembly.py),
// and redaction sees every byte of a head, so a secret cut across syscalls is joined. Binary protocols keep every
// syscall's payload: their parsers read the whole response (a PostgreSQL command tag or a MySQL error after the
// rows, Kafka's per-partition errors). The rule is written out as a specification in
// tests/e2e/test_agent_message_payloads.py, which holds this program to it; agent.continuation_payloads
// (PAYLOAD_CONTINUATIONS) sends every payload.
static __always_inline int starts_resp_message(u8 *h, u32 n) {  // Redis: a command array, a reply (RESP2 and RESP3 types)
    if (n == 0) return 0;
    u8 c = h[0];
    return c == '*' || c == '+' || c == '-' || c == ':' || c == '$' || c == '_' || c == ',' || c == '#' || c == '!' || c == '='
        || c == '(' || c == '%' || c == '~' || c == '>' || c == '|';
}

static __always_inline int starts_http_message(u8 *h, u32 n) {  // a response, or a request with a method the core knows
    if (n < 4) return 0;
    u8 c = h[0], c1 = h[1], c2 = h[2], c3 = h[3];  // its first four bytes
    if (c == 'H') return (c1 == 'T' && c2 == 'T' && c3 == 'P') || (c1 == 'E' && c2 == 'A' && c3 == 'D');
    if (c == 'G') return c1 == 'E' && c2 == 'T' && c3 == ' ';
    if (c == 'P') return (c1 == 'O' && c2 == 'S' && c3 == 'T') || (c1 == 'U' && c2 == 'T' && c3 == ' ') || (c1 == 'A' && c2 == 'T' && c3 == 'C');
    if (c == 'D') return c1 == 'E' && c2 == 'L' && c3 == 'E';
    if (c == 'O') return c1 == 'P' && c2 == 'T' && c3 == 'I';
    if (c == 'C') return c1 == 'O' && c2 == 'N' && c3 == 'N';
    if (c == 'T') return c1 == 'R' && c2 == 'A' && c3 == 'C';
    return 0;
}

// A lost event breaks its exchange: shed the rest of it, and if user space already holds part of it, tell
// it now with a header-only marker carrying the new loss generation (the socket may go quiet).
static __always_inline void exchange_lost(struct sock_flow *flow, struct data_event *e) {
    flow->loss_generation++;
    flow->shed = 1;
    if (!flow->sent) return;
    e->loss_generation = flow->loss_generation;
    e->bytes = 0;
    e->payload_len = 0;
    e->socket_seq = 0;
    if (loss_markers.ringbuf_output(e, __builtin_offsetof(struct data_event, payload), 0) != 0) count(CNT_LOSS_MARKERS_LOST);
}

static __always_inline void flush_batch(struct batch *b) {
    u32 used = b->used;
    u32 n = b->count;
    if (n && used <= BATCH_CAP) {
        u32 size = used + 8;
        if (data_events.ringbuf_output(&b->count, size, wakeup_flag(size)) == 0) {
            count_n(CNT_DATA_EVENTS, n);
        } else {
            count_n(CNT_DATA_LOST, n);
            for (u32 i = 0; i < BATCH_EVENTS; i++) {  // each socket's exchange once (the generation moves on)
                if (i >= n) break;
                u64 sk = b->sks[i];
                struct sock_flow *flow = sock_flows.lookup(&sk);
                u32 at = b->offsets[i];
                if (!flow || flow->loss_generation != b->generations[i] || at >= BATCH_BYTES) continue;
                exchange_lost(flow, (void *)b->data + at);
            }
        }
    }
    b->count = 0;
    b->used = 0;
    u32 zero = 0;
    u64 *pending = batch_pending.lookup(&zero);
    if (pending) *pending = 0;
}

// Send this CPU's batch once its first event is BATCH_NS old: FLUSH_HZ times a second on each CPU that runs something
// (flush_stale), and on the reader's kick.
static __always_inline int flush_if_stale(void) {
    u32 zero = 0;
    struct batch *b = batches.lookup(&zero);
    if (!b || b->busy || !b->count || bpf_ktime_get_ns() - b->first_ns < BATCH_NS) return 0;
    b->busy = 1;
    COMPILER_BARRIER();
    flush_batch(b);
    COMPILER_BARRIER();
    b->busy = 0;
    return 0;
}

int flush_stale(struct bpf_perf_event_data *ctx) { return flush_if_stale(); }

// writev/sendmsg (and their reads) carry a message in several iovecs: nginx writes an HTTP/2 frame's header and its
// payload apart, gRPC a frame per iovec. The capture goes on from the first iovec into the next ones, up to
// IOV_GATHER of them and the capture size, as the bytes went on the wire; `ret` bounds it, so no iovec past the
// ones the call moved is read. Each read lands after the last (the buffers have PAYLOAD_MAX of slack for the
// verifier's bound on a variable offset plus a variable size).
#define IOV_GATHER 64
static __always_inline u32 gather_iovecs(struct data_event *e, u64 iov, u32 len, long ret) {
    u64 taken = len;
#pragma unroll
    for (int i = 1; i < IOV_GATHER; i++) {
        if (len >= PAYLOAD_CAPTURE || taken >= (u64)ret) break;
        u64 base = 0, size = 0;
        bpf_probe_read_user(&base, sizeof(base), (void *)iov + 16 * i);
        bpf_probe_read_user(&size, sizeof(size), (void *)iov + 16 * i + 8);
        if (size > (u64)ret - taken) size = (u64)ret - taken;  // a read fills its iovecs only as far as it returned
        taken += size;
        u64 n = PAYLOAD_CAPTURE - len;
        if (size < n) n = size;
        u64 at = len;
        asm volatile("" : "+r"(n), "+r"(at));  // compared as they are passed, not as the compiler folded them
        if (n == 0 || n > PAYLOAD_MAX || at > PAYLOAD_MAX) break;  // the verifier's bounds
        bpf_probe_read_user(e->payload + at, n, (void *)base);
        len = at + n;
    }
    return len > PAYLOAD_CAPTURE ? PAYLOAD_CAPTURE : len;
}

// One data event for the call `a` describes, which moved `ret` (> 0) bytes.
static __always_inline void send_data(struct data_args *a, long ret, u64 pid_tgid) {
    u32 zero = 0;
    struct batch *b = batches.lookup(&zero);
    struct single *one = 0;
    struct data_event *e;
    u32 off = 0;
    if (b && !b->busy) {
        b->busy = 1;
        COMPILER_BARRIER();
        if (b->used >= BATCH_BYTES) flush_batch(b);  // not reached: a batch this full went out at its last append
        off = b->used & (BATCH_BYTES - 1);
        e = (void *)b->data + off;
    } else {
        b = 0;
        one = singles.lookup(&zero);
        if (!one) return;
        e = &one->e;
    }
    void *sk = (void *)a->sk;
    e->enter_ns = a->enter_ns;
    e->exit_ns = bpf_ktime_get_ns();
    e->socket_ino = a->socket_ino;
    e->netns = sock_netns(sk);
    e->cgroup_id = bpf_get_current_cgroup_id();
    e->pid = pid_tgid >> 32;
    e->tid = (u32)pid_tgid;
    e->fd = a->fd;
    e->bytes = ret;
    e->seq = a->seq;
    e->has_seq = a->has_seq;
    e->direction = a->direction;
    e->syscall = a->syscall;
    e->tls = a->tls;
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + OFF_SK_PROTOCOL);
    e->protocol = protocol;
    bpf_probe_read_kernel(&e->family, sizeof(e->family), sk + OFF_SKC_FAMILY);
    e->lport = sock_lport(sk);
    e->rport = sock_rport(sk);
    __builtin_memset(e->laddr, 0, 16);
    __builtin_memset(e->raddr, 0, 16);
    fill_addrs(sk, e->family, e->laddr, e->raddr);
    if (e->rport == 0 && a->addr) {
        // Unconnected UDP: the peer is in the syscall's address argument.
        u16 fam = e->family;
        read_sockaddr(a->addr, &fam, &e->rport, e->raddr);
    }
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    u64 skey = a->sk;
    struct sock_info *info = sock_infos.lookup(&skey);
    e->role = info ? info->role : ROLE_UNKNOWN;
    e->trace_id = thread_trace_id(pid_tgid, skey, e->role, e->direction);
    struct sock_flow *flow = sock_flows.lookup(&skey);
    e->loss_generation = flow ? flow->loss_generation : 0;
    e->sample_threshold = flow ? flow->threshold : SAMPLE_ALL;

    u64 src = a->buf;
    u64 avail = ret;
    if (a->iov) {
        // The first iovec {void *iov_base; size_t iov_len}; gather_iovecs appends the next ones.
        u64 iov_len = 0;
        bpf_probe_read_user(&src, sizeof(src), (void *)a->buf);
        bpf_probe_read_user(&iov_len, sizeof(iov_len), (void *)a->buf + 8);
        if (iov_len < avail) avail = iov_len;
    }
    u32 len = avail < PAYLOAD_CAPTURE ? avail : PAYLOAD_CAPTURE;
    if (len > PAYLOAD_MAX) len = PAYLOAD_MAX;  // the verifier's bound
#ifndef PAYLOAD_ALL_PROTOCOLS
    if (flow && flow->payload == PAYLOAD_COUNTS_ONLY && len > 0) {
        len = 0;
        count(CNT_UNKNOWN_PROTOCOL);
    }
#endif
    int tls_handshake = 0;
#ifndef PAYLOAD_ALL_PROTOCOLS
    if (flow && len > 0 && flow->payload == PAYLOAD_UNDECIDED && protocol == IPPROTO_TCP) {
        // A TLS handshake's first bytes (or its first byte, peeked by nginx): ciphertext no parser reads at a socket;
        // its plaintext, where the OpenSSL probes see it, comes as SSL_READ/SSL_WRITE events and decides afresh (shed()).
        u8 head[3] = {};
        bpf_probe_read_user(head, 3, (void *)src);
        if (head[0] == 0x16 && (len < 3 || (head[1] == 0x03 && head[2] <= 0x04))) {
            tls_handshake = 1;
            len = 0;
        }
    }
#endif
    if (flow && flow->data_dir != a->direction) flow->msg_bytes = 0;
#ifndef PAYLOAD_CONTINUATIONS
    if (flow && len > 0 && flow->msg_bytes && (flow->payload == PAYLOAD_HEADS || flow->payload == PAYLOAD_HEADS_RESP)) {
        u8 head[4] = {};
        u32 n = len < 4 ? len & 3 : 4;
        bpf_probe_read_user(head, n, (void *)src);
        if (flow->payload == PAYLOAD_HEADS ? starts_http_message(head, n) : starts_resp_message(head, n)) {
            flow->msg_bytes = 0;
        } else if (flow->msg_bytes >= PAYLOAD_CAPTURE) {
            len = 0;
            count(CNT_CONTINUATIONS);
        } else if (len > PAYLOAD_CAPTURE - flow->msg_bytes) {
            len = PAYLOAD_CAPTURE - flow->msg_bytes;  // the rest of the head: what follows in this syscall is counted
            if (len > PAYLOAD_MAX) len = PAYLOAD_MAX;  // the verifier's bound
        }
    }
#endif
    if (flow && ret > 0) {
        flow->data_dir = a->direction;
        u64 moved = (u64)flow->msg_bytes + (u64)ret;
        flow->msg_bytes = moved > 0xFFFF ? 0xFFFF : moved;
    }
    if (len > 0) bpf_probe_read_user(e->payload, len, (void *)src);
    if (a->iov && len > 0 && len == avail && avail < ret) len = gather_iovecs(e, a->buf, len, ret);
    e->payload_len = len;
    if (flow && tls_handshake) {
        flow->payload = PAYLOAD_COUNTS_ONLY;
    } else if (flow && len > 0 && flow->payload == PAYLOAD_UNDECIDED) {  // this first payload goes out either way
        u8 decided = PAYLOAD_COUNTS_ONLY;
        if (may_be_parsed(e->payload, len, protocol)) {
            decided = protocol != IPPROTO_TCP ? PAYLOAD_SHIP
                : starts_http_message(e->payload, len < 4 ? len : 4) ? PAYLOAD_HEADS
                : starts_resp_message(e->payload, len) ? PAYLOAD_HEADS_RESP : PAYLOAD_SHIP;
        } else if (protocol == IPPROTO_TCP && len < TOO_SHORT_TO_TELL && len == ret) {
            // Too few bytes to tell (a Kafka broker or mariadbd reads a request's length prefix alone, then the rest):
            // the core holds them for the next ones, so they all go out.
            decided = PAYLOAD_SHIP;
        } else {
            // As the core decides: a server's bytes do not settle it (a capture that starts mid-connection may start
            // with a response), the client's do; which side is the client, the role says, or else both directions.
            flow->unclaimed |= 1 << (a->direction & 1);
            int from_server = e->role == (a->direction == DIR_EGRESS ? ROLE_SERVER : ROLE_CLIENT);
            if (from_server || (e->role == ROLE_UNKNOWN && flow->unclaimed != 3)) decided = PAYLOAD_UNDECIDED;
        }
        flow->payload = decided;
    }
    e->socket_seq = flow ? (u32)(__sync_fetch_and_add(&flow->seq, 1) + 1) : 0;
    u32 size = __builtin_offsetof(struct data_event, payload) + len;
    if (b) {
        u32 i = b->count & (BATCH_EVENTS - 1);
        b->sks[i] = skey;
        b->offsets[i] = off;
        b->generations[i] = e->loss_generation;
        if (!b->count) {
            b->first_ns = e->exit_ns;
            u64 *pending = batch_pending.lookup(&zero);
            if (pending) *pending = e->exit_ns;
        }
        b->count++;
        b->used = off + ((size + 7) & ~7u);
        if (flow) flow->sent = 1;
        if (b->count >= BATCH_EVENTS || b->used >= BATCH_BYTES || e->exit_ns - b->first_ns >= BATCH_NS) flush_batch(b);
        COMPILER_BARRIER();
        b->busy = 0;
    } else {
        one->count = 1;
        one->used = size;
        if (data_events.ringbuf_output(one, 8 + size, wakeup_flag(8 + size)) != 0) {
            count(CNT_DATA_LOST);
            if (flow) exchange_lost(flow, e);
        } else {
            count(CNT_DATA_EVENTS);
            if (flow) flow->sent = 1;
        }
    }
}

static __always_inline int exit_data(long ret) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct data_args *a = active_data.lookup(&pid_tgid);
    if (!a) return 0;
    if (ret > 0) send_data(a, ret, pid_tgid);
    active_data.delete(&pid_tgid);
    return 0;
}

// The OpenSSL probes (see struct ssl_call; direction DIR_NONE: a handshake). SSL_read(ssl, buf, num) and SSL_write(ssl, buf, num) return the byte
// count; SSL_read_ex(ssl, buf, num, &readbytes) and SSL_write_ex(ssl, buf, num, &written) return 1 and store it.
static __always_inline int ssl_enter(struct pt_regs *ctx, u8 direction, u8 ex) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32;
    if (excluded_pids.lookup(&pid) || process_filtered()) return 0;
    if (direction == DIR_NONE && ssl_calls.lookup(&pid_tgid)) return 0;  // a handshake inside a read or write: theirs
    struct ssl_call c = {};
    c.ssl = PT_REGS_PARM1(ctx);
    c.buf = PT_REGS_PARM2(ctx);
    c.done = ex ? PT_REGS_PARM4(ctx) : 0;
    c.enter_ns = bpf_ktime_get_ns();
    c.direction = direction;
    ssl_calls.update(&pid_tgid, &c);
    return 0;
}
int ssl_read_enter(struct pt_regs *ctx) { return ssl_enter(ctx, DIR_INGRESS, 0); }
int ssl_write_enter(struct pt_regs *ctx) { return ssl_enter(ctx, DIR_EGRESS, 0); }
int ssl_read_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, DIR_INGRESS, 1); }
int ssl_write_ex_enter(struct pt_regs *ctx) { return ssl_enter(ctx, DIR_EGRESS, 1); }
// SSL_do_handshake, SSL_accept, SSL_connect: no plaintext, but their syscalls tie the SSL object to its socket (and are
// ciphertext, not sent): nginx reads ahead, so its first SSL_read may find the request read by the handshake.
int ssl_handshake_enter(struct pt_regs *ctx) { return ssl_enter(ctx, DIR_NONE, 0); }

// The return of any of the four (one program: the call's entry says which it was).
int ssl_return(struct pt_regs *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct ssl_call *c = ssl_calls.lookup(&pid_tgid);
    if (!c) return 0;
    long ret = PT_REGS_RC(ctx);
    if (c->done) {
        u64 n = 0;
        if ((int)ret == 1) bpf_probe_read_user(&n, sizeof(n), (void *)c->done);
        ret = (int)ret == 1 ? (long)n : 0;
    } else {
        ret = (int)ret;
    }
    struct ssl_key key = {.ssl = c->ssl, .pid = pid_tgid >> 32};
    if (c->direction == DIR_NONE) {  // a handshake
        if (c->sk) {
            struct ssl_socket tied = {.socket_ino = c->socket_ino, .fd = c->fd};
            ssl_sockets.update(&key, &tied);
        }
        ssl_calls.delete(&pid_tgid);
        return 0;
    }
    struct data_args a = {};
    void *sk = 0;
    if (c->sk) {
        sk = (void *)c->sk;
        a.socket_ino = c->socket_ino;
        a.fd = c->fd;
        struct ssl_socket tied = {.socket_ino = c->socket_ino, .fd = c->fd};
        ssl_sockets.update(&key, &tied);
        a.seq = c->seq;
        a.has_seq = c->has_seq;
    } else if (ret > 0) {
        struct ssl_socket *tied = ssl_sockets.lookup(&key);
        if (tied) {
            sk = fd_to_sock(tied->fd, &a.socket_ino);  // still the same socket? (an SSL object freed and its address reused)
            if (sk && a.socket_ino != tied->socket_ino) sk = 0;
            a.fd = tied->fd;
        }
        if (!sk) count(CNT_TLS_UNTIED);
    }
    a.enter_ns = c->enter_ns;
    a.buf = c->buf;
    a.direction = c->direction;
    a.syscall = c->direction == DIR_EGRESS ? SYS_SSL_WRITE : SYS_SSL_READ;
    a.tls = 1;
    ssl_calls.delete(&pid_tgid);
    if (ret <= 0 || !sk || filtered(sk) || shed(sk, a.socket_ino, a.direction, 1)) return 0;
    a.sk = (u64)sk;
    send_data(&a, ret, pid_tgid);
    return 0;
}


// struct user_msghdr (ABI): msg_name @0, msg_namelen @8, msg_iov @16, msg_iovlen @24.
static __always_inline int enter_msg(u32 fd, u64 msg, u8 syscall, u8 direction) {
    u64 name = 0, iov = 0;
    bpf_probe_read_user(&name, sizeof(name), (void *)msg);
    bpf_probe_read_user(&iov, sizeof(iov), (void *)msg + 16);
    return enter_data(fd, iov, name, syscall, direction, 1);
}

// sendmmsg / recvmmsg: the first message only; its byte count is vec[0].msg_len (after the
// 56-byte msghdr), filled by the kernel on return.
struct mmsg_args { u64 vec; };
BPF_HASH(active_mmsg, u64, struct mmsg_args, 4096);
static __always_inline int enter_mmsg(u32 fd, u64 vec, u8 syscall, u8 direction) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct mmsg_args m = {.vec = vec};
    active_mmsg.update(&pid_tgid, &m);
    return enter_msg(fd, vec, syscall, direction);
}
static __always_inline int exit_mmsg(long ret) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct mmsg_args *m = active_mmsg.lookup(&pid_tgid);
    if (!m) return 0;
    u32 first_len = 0;
    if (ret > 0) bpf_probe_read_user(&first_len, sizeof(first_len), (void *)m->vec + 56);
    active_mmsg.delete(&pid_tgid);
    return exit_data(ret > 0 ? (long)first_len : ret);
}

// Roles: connect() makes a client socket, accept() a server one --------------------------------
static __always_inline void remember_socket(u32 fd, u8 role) {
    u64 ino = 0;
    void *sk = fd_to_sock(fd, &ino);
    if (!sk) return;
    u64 key = (u64)sk;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    struct sock_info info = {.socket_ino = ino, .pid = pid_tgid >> 32, .tid = (u32)pid_tgid, .role = role};
    bpf_get_current_comm(&info.comm, sizeof(info.comm));
    sock_infos.update(&key, &info);
}


static __always_inline int exit_accept(long ret) {
    if (ret < 0) return 0;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (excluded_pids.lookup(&pid) || process_filtered()) return 0;
    remember_socket(ret, ROLE_SERVER);
    u64 ino = 0;
    void *sk = fd_to_sock(ret, &ino);
    if (!sk || filtered(sk)) return 0;
    struct lifecycle_event e = {};
    e.kind = LC_ACCEPT;
    e.ts_ns = bpf_ktime_get_ns();
    e.socket_ino = ino;
    e.netns = sock_netns(sk);
    e.pid = pid;
    e.tid = (u32)bpf_get_current_pid_tgid();
    e.role = ROLE_SERVER;
    e.protocol = IPPROTO_TCP;
    bpf_probe_read_kernel(&e.family, sizeof(e.family), sk + OFF_SKC_FAMILY);
    e.lport = sock_lport(sk);
    e.rport = sock_rport(sk);
    fill_addrs(sk, e.family, e.laddr, e.raddr);
    bpf_get_current_comm(&e.comm, sizeof(e.comm));
    if (lifecycle_events.ringbuf_output(&e, sizeof(e), 0) != 0) count(CNT_LIFECYCLE_LOST);
    return 0;
}

// The syscall hooks ------------------------------------------------------------------------------
#ifdef RAW_SYSCALLS
// Two raw tracepoints for every syscall of the machine, dispatching on its number (the loader passes
// this architecture's NR_* and the pt_regs offsets of the first four arguments): about a third of the
// cost of one perf-event tracepoint per syscall and direction, and an early return for the others.
static __always_inline u64 syscall_arg(struct pt_regs *regs, u64 off) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)regs + off);
    return v;
}

RAW_TRACEPOINT_PROBE(sys_enter) {
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long id = ctx->args[1];
    switch (id) {
    case NR_READ: return enter_data(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), 0, SYS_READ, DIR_INGRESS, 0);
    case NR_WRITE: return enter_data(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), 0, SYS_WRITE, DIR_EGRESS, 0);
    case NR_READV: return enter_data(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), 0, SYS_READV, DIR_INGRESS, 1);
    case NR_WRITEV: return enter_data(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), 0, SYS_WRITEV, DIR_EGRESS, 1);
    // recvfrom(fd, buf, len, flags, addr, addrlen) / sendto(fd, buf, len, flags, addr, addrlen): addr is the fifth
    case NR_RECVFROM: return enter_data(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), syscall_arg(regs, OFF_ARG4), SYS_RECVFROM, DIR_INGRESS, 0);
    case NR_SENDTO: return enter_data(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), syscall_arg(regs, OFF_ARG4), SYS_SENDTO, DIR_EGRESS, 0);
    case NR_RECVMSG: return enter_msg(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), SYS_RECVMSG, DIR_INGRESS);
    case NR_SENDMSG: return enter_msg(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), SYS_SENDMSG, DIR_EGRESS);
    case NR_RECVMMSG: return enter_mmsg(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), SYS_RECVMMSG, DIR_INGRESS);
    case NR_SENDMMSG: return enter_mmsg(syscall_arg(regs, OFF_ARG0), syscall_arg(regs, OFF_ARG1), SYS_SENDMMSG, DIR_EGRESS);
    case NR_CONNECT: remember_socket(syscall_arg(regs, OFF_ARG0), ROLE_CLIENT); return 0;
    case NR_GETPPID: return flush_if_stale();  // the reader's kick
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
    long ret = ctx->args[1];
    long id = syscall_arg(regs, OFF_SYSCALL_NR);
    switch (id) {
    case NR_READ: case NR_WRITE: case NR_READV: case NR_WRITEV: case NR_RECVFROM: case NR_SENDTO: case NR_RECVMSG: case NR_SENDMSG:
        return exit_data(ret);
    case NR_RECVMMSG: case NR_SENDMMSG: return exit_mmsg(ret);
    case NR_ACCEPT: case NR_ACCEPT4: return exit_accept(ret);
    }
    return 0;
}
#else
// One tracepoint per syscall and direction: any architecture.
TRACEPOINT_PROBE(syscalls, sys_enter_read) { return enter_data(args->fd, (u64)args->buf, 0, SYS_READ, DIR_INGRESS, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_read) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_write) { return enter_data(args->fd, (u64)args->buf, 0, SYS_WRITE, DIR_EGRESS, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_write) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_readv) { return enter_data(args->fd, (u64)args->vec, 0, SYS_READV, DIR_INGRESS, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_readv) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return enter_data(args->fd, (u64)args->vec, 0, SYS_WRITEV, DIR_EGRESS, 1); }
TRACEPOINT_PROBE(syscalls, sys_exit_writev) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvfrom) { return enter_data(args->fd, (u64)args->ubuf, (u64)args->addr, SYS_RECVFROM, DIR_INGRESS, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvfrom) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return enter_data(args->fd, (u64)args->buff, (u64)args->addr, SYS_SENDTO, DIR_EGRESS, 0); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendto) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmsg) { return enter_msg(args->fd, (u64)args->msg, SYS_RECVMSG, DIR_INGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return enter_msg(args->fd, (u64)args->msg, SYS_SENDMSG, DIR_EGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmsg) { return exit_data(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg) { return enter_mmsg(args->fd, (u64)args->mmsg, SYS_SENDMMSG, DIR_EGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_sendmmsg) { return exit_mmsg(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_recvmmsg) { return enter_mmsg(args->fd, (u64)args->mmsg, SYS_RECVMMSG, DIR_INGRESS); }
TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg) { return exit_mmsg(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept) { return exit_accept(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_accept4) { return exit_accept(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) { return flush_if_stale(); }  // the reader's kick
TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    remember_socket(args->fd, ROLE_CLIENT);
    return 0;
}
#endif

// TCP lifecycle and health ------------------------------------------------------------------------
static __always_inline void lifecycle_from_sock(struct lifecycle_event *e, void *sk) {
    u64 key = (u64)sk;
    struct sock_info *info = sock_infos.lookup(&key);
    if (info) {
        // The socket's owner: state changes often run in softirq, on whatever task was interrupted.
        e->pid = info->pid;
        e->tid = info->tid;
        e->socket_ino = info->socket_ino;
        e->role = info->role;
        __builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
    }
    e->netns = sock_netns(sk);
    e->protocol = IPPROTO_TCP;
    bpf_probe_read_kernel(&e->family, sizeof(e->family), sk + OFF_SKC_FAMILY);
    e->lport = sock_lport(sk);
    e->rport = sock_rport(sk);
    fill_addrs(sk, e->family, e->laddr, e->raddr);
}

static __always_inline void emit_lifecycle(struct lifecycle_event *e) {
    if (lifecycle_events.ringbuf_output(e, sizeof(*e), 0) != 0) count(CNT_LIFECYCLE_LOST);
}

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP) return 0;
    void *sk = (void *)args->skaddr;
    if (filtered(sk)) return 0;
    struct lifecycle_event e = {};
    e.kind = LC_STATE;
    e.ts_ns = bpf_ktime_get_ns();
    e.oldstate = args->oldstate;
    e.newstate = args->newstate;
    lifecycle_from_sock(&e, sk);
    // The tracepoint's own tuple: by the move to CLOSE the kernel may have released the local port.
    e.family = args->family;
    e.lport = args->sport;
    e.rport = args->dport;
    if (e.family == AF_INET) {
        __builtin_memcpy(e.laddr, args->saddr, 4);
        __builtin_memcpy(e.raddr, args->daddr, 4);
    } else {
        __builtin_memcpy(e.laddr, args->saddr_v6, 16);
        __builtin_memcpy(e.raddr, args->daddr_v6, 16);
    }
    if (e.newstate == 7 /* TCP_CLOSE */) {
        bpf_probe_read_kernel(&e.error, sizeof(e.error), sk + OFF_SK_ERR);
        bpf_probe_read_kernel(&e.bytes_acked, sizeof(e.bytes_acked), sk + OFF_TCP_BYTES_ACKED);
        bpf_probe_read_kernel(&e.bytes_received, sizeof(e.bytes_received), sk + OFF_TCP_BYTES_RECEIVED);
        bpf_probe_read_kernel(&e.total_retrans, sizeof(e.total_retrans), sk + OFF_TCP_TOTAL_RETRANS);
        u64 flow_key = (u64)sk;
        struct sock_flow *flow = sock_flows.lookup(&flow_key);
        if (flow) e.loss_generation = flow->loss_generation;
    }
    emit_lifecycle(&e);
    if (e.newstate == 7) {
        u64 key = (u64)sk;
        sock_infos.delete(&key);
        sock_last_dir.delete(&key);
        sock_flows.delete(&key);
        rtt_last_ns.delete(&key);
    }
    return 0;
}

static __always_inline int sock_event(void *sk, u8 kind, u8 state) {
    if (!sk || filtered(sk)) return 0;
    struct lifecycle_event e = {};
    e.kind = kind;
    e.ts_ns = bpf_ktime_get_ns();
    e.newstate = state;
    lifecycle_from_sock(&e, sk);
    emit_lifecycle(&e);
    return 0;
}

TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) { return sock_event((void *)args->skaddr, LC_RETRANSMIT, args->state); }
TRACEPOINT_PROBE(tcp, tcp_send_reset) { return sock_event((void *)args->skaddr, LC_RESET_SENT, 0); }
TRACEPOINT_PROBE(tcp, tcp_receive_reset) { return sock_event((void *)args->skaddr, LC_RESET_RECEIVED, 0); }

TRACEPOINT_PROBE(tcp, tcp_probe) {
    void *sk = (void *)args->skaddr;
    if (!sk) return 0;
    u64 key = (u64)sk;
    u64 now = bpf_ktime_get_ns();
    u64 *last = rtt_last_ns.lookup(&key);
    if (last && now - *last < RTT_SAMPLE_INTERVAL_NS) return 0;  // one sample per socket per second
    rtt_last_ns.update(&key, &now);
    if (filtered(sk)) return 0;
    struct lifecycle_event e = {};
    e.kind = LC_RTT;
    e.ts_ns = now;
    e.srtt_us = args->srtt;  // the tracepoint already shifted tcp_sock.srtt_us (8 x RTT) to microseconds
    lifecycle_from_sock(&e, sk);
    emit_lifecycle(&e);
    return 0;
}
