"""The profiler on a real program: a C program (compiled here at -O0, so every function keeps its frame for the walk) whose two functions burn CPU in
a known ratio, and whose second thread sleeps 1 s in nanosleep. The on-CPU profile gives each function its share
within 10 points; the off-CPU profile gives the sleeping thread about 1 s in nanosleep's stack."""

import subprocess
import time

import pytest

from producers.ebpf.profiler import OFF_CPU, ON_CPU, Profiler

PROGRAM = r"""
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <unistd.h>

static volatile unsigned long sink;
__attribute__((noinline)) void burn(unsigned long n) { for (unsigned long i = 0; i < n; i++) sink += i; }
__attribute__((noinline)) void heavy(void) { burn(3000000); }  /* three times light's work */
__attribute__((noinline)) void light(void) { burn(1000000); }

static void *sleeper(void *arg) {
    struct timespec one_second = {1, 0};
    nanosleep(&one_second, NULL);
    return NULL;
}

int main(void) {
    pthread_t t;
    printf("ready\n");
    fflush(stdout);
    pthread_create(&t, NULL, sleeper, NULL);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    do {
        heavy();
        light();
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while (now.tv_sec - start.tv_sec < 3);
    pthread_join(t, NULL);
    printf("done\n");  /* then wait: the profile is read while the process lives (symbols come from its maps) */
    fflush(stdout);
    getchar();
    return 0;
}
"""


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    directory = tmp_path_factory.mktemp("profiled")
    (directory / "shares.c").write_text(PROGRAM)
    binary = directory / "shares"
    subprocess.run(["gcc", "-O0", "-fno-omit-frame-pointer", "-pthread", "-o", str(binary), str(directory / "shares.c")], check=True)
    profiler = Profiler(sample_hz=99, min_block_ms=1.0, off_cpu=True)
    try:
        program = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert program.stdout.readline() == "ready\n"
        assert program.stdout.readline() == "done\n"
        time.sleep(0.2)
        profiles = [p for p in profiler.collect() if p.pid == program.pid]
        # after a window only the stacks of threads asleep now stay in the map (their blocks are counted when they wake)
        left = {k.value for k in profiler.bpf["stacks"].keys()}
        held = {i for b in profiler.bpf["blocked_at"].values() for i in (b.user_stack, b.kernel_stack)}
        program.communicate("\n", timeout=10)
    finally:
        profiler.close()
    return {**{p.kind: p for p in profiles}, "stacks_left": left, "stacks_held": held}


def test_on_cpu_shares_follow_the_work_each_function_does(profiled):
    on_cpu = profiled[ON_CPU]
    heavy, light = on_cpu.by_frame("heavy"), on_cpu.by_frame("light")
    assert on_cpu.total() >= 150  # 3 s at 99 Hz on one CPU (297), with room for a busy machine
    assert heavy + light >= 0.8 * on_cpu.total()
    assert abs(heavy / (heavy + light) - 0.75) <= 0.10, (heavy, light)
    assert all(folded.startswith("shares;") for _, folded in on_cpu.stacks)
    assert any("main;heavy;burn" in folded for _, folded in on_cpu.stacks)


def test_a_thread_blocked_one_second_shows_one_second_off_cpu_in_nanosleep(profiled):
    off_cpu = profiled[OFF_CPU]
    asleep = {(tid, folded): ns for (tid, folded), ns in off_cpu.stacks.items() if "nanosleep" in folded}
    assert len({tid for tid, _ in asleep}) == 1
    assert 0.95e9 <= sum(asleep.values()) <= 1.2e9, asleep


def test_a_window_read_empties_the_stack_map_but_for_the_sleepers_stacks(profiled):
    assert profiled["stacks_left"] <= profiled["stacks_held"]
