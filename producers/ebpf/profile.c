// tracetap profiler: on-CPU samples and off-CPU time, by thread and stack, counted in the kernel.
//
// On-CPU: a `cpu-clock` perf event at SAMPLE_HZ on every CPU (on_cpu) counts the running thread's (user stack,
// kernel stack). Off-CPU: sched:sched_switch, in the context of the thread switched out, remembers when and where
// (its stacks) it blocked; when the thread is switched in again the time it spent off the CPU is added to that
// stack, if it is at least MIN_BLOCK_NS. User space reads and clears both maps once per window and symbolises the
// stacks (producers/ebpf/profiler.py). Nothing is read from kernel structs: the tracepoint's fields and helpers only.
// Off-CPU is compiled in with OFF_CPU only: it walks both stacks at every switch where a thread goes to sleep (about
// 2 us on this project's test machine), a cost that follows the node's context-switch rate (benchmarks/profiler_overhead.py).

#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>

struct stack_key {
    u32 pid;       // the process (tgid)
    u32 tid;       // the thread
    s32 user_stack;
    s32 kernel_stack;
    char comm[16];
};

struct blocked {
    u64 since_ns;
    s32 user_stack;
    s32 kernel_stack;
    u32 pid;
    char comm[16];
};

BPF_STACK_TRACE(stacks, STACK_ENTRIES);
BPF_HASH(on_cpu_samples, struct stack_key, u64, KEYS_MAX);
BPF_HASH(off_cpu_ns, struct stack_key, u64, KEYS_MAX);
BPF_HASH(blocked_at, u32, struct blocked, THREADS_MAX);
BPF_HASH(excluded_pids, u32, u8, 1024);
BPF_HASH(included_cgroups, u64, u8, 1024);  // with CGROUP_FILTER: only these cgroup v2 ids (the agent's include_cgroups)
BPF_ARRAY(lost, u64, 2);  // [0] samples and [1] blocks not counted: a map was full

static __always_inline int left_out(u32 pid) {
    if (excluded_pids.lookup(&pid)) return 1;
#ifdef CGROUP_FILTER
    u64 cgroup = bpf_get_current_cgroup_id();
    if (!included_cgroups.lookup(&cgroup)) return 1;
#endif
    return 0;
}

static __always_inline void count_lost(u32 which) {
    u64 *c = lost.lookup(&which);
    if (c) __sync_fetch_and_add(c, 1);
}

int on_cpu(struct bpf_perf_event_data *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32, tid = (u32)pid_tgid;
    if (!tid || left_out(pid)) return 0;  // the idle task, or not profiled
    struct stack_key key = {.pid = pid, .tid = tid};
    key.user_stack = stacks.get_stackid(ctx, BPF_F_USER_STACK);
    key.kernel_stack = stacks.get_stackid(ctx, 0);
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    u64 one = 1;
    u64 *n = on_cpu_samples.lookup(&key);
    if (n) {
        __sync_fetch_and_add(n, 1);
    } else if (on_cpu_samples.update(&key, &one) != 0) {
        count_lost(0);
    }
    return 0;
}

#ifdef OFF_CPU
// prev_state's low byte is the task state the thread left the CPU in; TASK_REPORT_MAX (0x100) marks a thread
// preempted while runnable ("R+"), which is not blocked.
#define BLOCKED_STATES 0xff

TRACEPOINT_PROBE(sched, sched_switch) {
    u64 now = bpf_ktime_get_ns();
    // The thread switched out: this program runs in its context, so its stacks are the current ones. A thread that
    // is still runnable (preempted) is not blocked: only one that sleeps is timed.
    u32 prev = args->prev_pid;
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 pid = pid_tgid >> 32;
    if (prev && (args->prev_state & BLOCKED_STATES) && !left_out(pid)) {
        struct blocked b = {.since_ns = now, .pid = pid};
        b.user_stack = stacks.get_stackid(args, BPF_F_USER_STACK);
        b.kernel_stack = stacks.get_stackid(args, 0);
        bpf_get_current_comm(&b.comm, sizeof(b.comm));
        blocked_at.update(&prev, &b);
    }
    // The thread switched in: the time since it blocked, on the stack it blocked in.
    u32 next = args->next_pid;
    struct blocked *b = blocked_at.lookup(&next);
    if (!b) return 0;
    u64 delta = now - b->since_ns;
    if (delta >= MIN_BLOCK_NS) {
        struct stack_key key = {.pid = b->pid, .tid = next, .user_stack = b->user_stack, .kernel_stack = b->kernel_stack};
        __builtin_memcpy(key.comm, b->comm, sizeof(key.comm));
        u64 *total = off_cpu_ns.lookup(&key);
        if (total) {
            __sync_fetch_and_add(total, delta);
        } else if (off_cpu_ns.update(&key, &delta) != 0) {
            count_lost(1);
        }
    }
    blocked_at.delete(&next);
    return 0;
}
#endif  // OFF_CPU
