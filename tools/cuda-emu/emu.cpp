// The emulated device: a stand-in libcuda.so whose kernels are kernels/*.cu compiled as host C++
// (tools/cuda-emu/README.md says why and what it does not cover). Two halves:
//   1. a block runner: each CUDA thread of a block is a fiber on the calling host
//      thread; __syncthreads and the warp collectives (shuffles, mma.sync, ldmatrix) are barriers
//      at which a fiber yields until every live thread of its block / warp has arrived;
//   2. the driver API entry points the Rust runtime (through cudarc) calls, over host memory:
//      device pointers are host pointers, every stream runs its work at once, in order, and a
//      stream capture records the work for a graph to replay.
// The device reports compute capability 8.0 (an A100's kernels and choices), or 9.0 with
// JOBX_EMU_SM=90 (an H100's: the sm_90a kernels with wgmma, TMA and mbarriers, section
// "sm_90a" below).
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_bf16.h"
#include "jobx_params.h"

// ---------------------------------------------------------------- block runner

// Fiber switch: saves the callee-saved registers on the current stack, stores its pointer in
// *save and continues on `to` (a stack left by an earlier switch, or a new fiber's, see
// run_grid). ucontext's swapcontext does the same plus a signal-mask system call per switch,
// which took half of the emulator's time.
#if !defined(__x86_64__)
#error "tools/cuda-emu: the fiber switch is written for x86-64"
#endif
extern "C" void jobx_emu_switch(void** save, void* to);
asm(R"(
.text
.globl jobx_emu_switch
.type jobx_emu_switch,@function
jobx_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size jobx_emu_switch, .-jobx_emu_switch
)");

namespace jobx_emu {
jobx_dim3 block_idx, block_dim, grid_dim;
const char* g_kernel_name = nullptr;  // the kernel running (messages, on_segv)
// Ends the process with the kernel, block and thread that did something the hardware forbids
// or the emulator does not model (a wgmma of an incomplete warpgroup, an unknown descriptor).
[[noreturn]] void fatal(const std::string& what);

namespace {
// WAIT_GROUP: at a warpgroup collective (wgmma and its commit / wait); WAIT_NAMED: at named
// barrier `bar`; SPIN: polling an mbarrier, runnable again when some mbarrier's phase completes
enum State { RUN, WAIT_WARP, WAIT_BLOCK, WAIT_GROUP, WAIT_NAMED, SPIN, DONE };
// a cp.async issued and not yet landed: its 16 bytes are read from src and written to dst
// (src bytes, then zeros) when it lands
struct Copy {
    unsigned char* dst;
    const void* src;
    int bytes;
};
struct Fiber {
    void* sp = nullptr;
    // this thread's cp.async copies, oldest first; group_ends[i] = copies in groups 0..i
    std::vector<Copy> copies;
    std::vector<size_t> group_ends;
    jobx_dim3 tid;
    int warp = 0, lane = 0, group = 0, bar = 0;
    State state = DONE;
    bool woken = false;  // runnable again since an mbarrier phase it polled completed
    bool deferred = false;  // yielded after completing an mbarrier phase: runs after the others
    // a wgmma.fence since this thread's start or its last wgmma.wait_group (wgmma's rule)
    bool wg_fenced = false;
};
struct Warp {
    int live = 0, arrived = 0;
    unsigned phase = 0;
    // two deposit slabs used in turn: a lane that passes a barrier can deposit for the next
    // collective while the others still read this one's
    uint64_t slab[2][32][4];
};
constexpr size_t STACK = 256 * 1024;
constexpr int MAX_THREADS = 1024;
// Dynamic shared memory (and the base of the shared-window offsets): the most a block may ask
// for (227 KB, as an A100 or H100) rounded up to whole pages, plus a page that stays
// inaccessible. A launch's dynamic shared memory is placed to end where the inaccessible pages
// begin (run_grid), so a kernel that reaches past what its launch asked for faults.
constexpr size_t PAGE = 4096, DYN_MAX = 232448;
constexpr size_t DYN_BUF = (DYN_MAX + PAGE - 1) / PAGE * PAGE + PAGE;
alignas(PAGE) unsigned char g_dyn_smem[DYN_BUF];
unsigned char* g_dyn_start = g_dyn_smem;  // this launch's dynamic shared memory
size_t g_dyn_size = 0;                    // its bytes
// The async proxy's view of the dynamic shared memory (sm_90a; same offsets as g_dyn_smem):
// what wgmma's operand reads and the TMA engine may rely on. TMA writes go to both; generic
// writes (the kernel's own stores, cp.async landing) only to g_dyn_smem, until a
// fence.proxy.async copies the memory over. A wgmma operand byte, or a byte a TMA load
// overwrites, that differs between the two was written through the generic proxy with no
// fence since: the hardware may show the async proxy the old value.
unsigned char g_async_view[DYN_BUF];
std::vector<Fiber> g_fibers(MAX_THREADS);
std::vector<unsigned char*> g_stacks;
Warp g_warps[MAX_THREADS / 32];
// sm_90a: the wgmma products a warpgroup issued (`open`) and committed (`pending`, oldest
// first), run at the wait that retires them: the descriptors as issued, each thread's
// accumulator and A registers through their addresses
struct WgmmaOp {
    bool int8, trans_b;
    int n, scale_d;
    unsigned long long da, db;
    void* d[128];
    const unsigned* a[128];  // null: A from shared memory (da)
};
struct Group {
    int live = 0, arrived = 0;
    uint64_t slab[128][4];
    std::vector<WgmmaOp> open;
    std::deque<std::vector<WgmmaOp>> pending;
};
Group g_groups[MAX_THREADS / 128];
// a named barrier's current phase: how many threads arrived (bar.sync or bar.arrive), which
struct NamedBar {
    int arrived = 0, count = 0;
    std::vector<bool> in = std::vector<bool>(MAX_THREADS);
};
NamedBar g_named[16];
struct Mbar {
    int expected = 0, pending = 0;
    long long tx = 0;
    unsigned phase = 0;
    // its initialisation fenced for the copy engine (fence.mbarrier_init, fence.proxy.async)
    bool visible = false;
};
std::map<unsigned, Mbar> g_mbars;  // by shared-window offset; a block's are reset at its start
int g_block_live = 0, g_block_arrived = 0, g_nthreads = 0;
unsigned g_block_phase = 0;
bool g_block_and[2];
int g_cur = 0;
int g_woken = 0;  // fibers with `woken` set
void* g_sched_sp = nullptr;  // the launching host code's stack while fibers run
void (*g_call)(const void*) = nullptr;
const void* g_params = nullptr;

// The index in `values` of environment variable `name`'s value: 0 (the default) when unset,
// empty or none of them, which is said on stderr.
int env_choice(const char* name, std::initializer_list<const char*> values) {
    const char* v = std::getenv(name);
    if (!v || !*v) return 0;
    int i = 0;
    for (const char* c : values) {
        if (std::strcmp(v, c) == 0) return i;
        i++;
    }
    std::fprintf(stderr, "jobx cuda-emu: %s=%s: not one of the emulated choices; using %s\n", name, v,
                 *values.begin());
    return 0;
}

// JOBX_EMU_ORDER=reverse: threads take their turns in descending order (from the block's last
// thread). Fibers switch only at barriers, so a thread reads shared memory that another writes
// without a barrier between them correctly in one of the two orders only; a test that passes in
// both has no such missing barrier between two threads whose order matters.
bool reverse_order() {
    static const bool on = env_choice("JOBX_EMU_ORDER", {"forward", "reverse"}) == 1;
    return on;
}

// Makes the threads in [lo, hi) that wait in state `s` (at named barrier `bar` for WAIT_NAMED)
// runnable; `woken` marks them to run first (switch_away).
void wake(int lo, int hi, State s, int bar = 0, bool woken = false) {
    for (int i = lo; i < g_nthreads && i < hi; i++) {
        Fiber& f = g_fibers[i];
        if (f.state != s || (s == WAIT_NAMED && f.bar != bar)) continue;
        f.state = RUN;
        if (woken && !f.woken) {
            f.woken = true;
            g_woken++;
        }
    }
}

// Leaves the current fiber (blocked, done, or yielding: mbar_arrive) for the next runnable one
// after it, or for the launching code when none can run (the block is done, or deadlocked); a
// yielding fiber runs again after every other runnable one. A fiber woken by an mbarrier goes
// first: a producer released by its consumers refills the slot before they go
// on, the order in which a slot released too early (before the wgmma reading it has retired)
// is overwritten under that wgmma.
void switch_away() {
    const int from = g_cur;
    auto switch_to = [from](int j) {
        g_fibers[j].deferred = false;
        if (g_fibers[j].woken) {
            g_fibers[j].woken = false;
            g_woken--;
        }
        g_cur = j;
        // (a runnable thread that yields, mbar_arrive, may find itself the next to run)
        if (j != from) jobx_emu_switch(&g_fibers[from].sp, g_fibers[j].sp);
    };
    for (int j = 0; g_woken > 0 && j < g_nthreads; j++)
        if (g_fibers[j].woken && g_fibers[j].state == RUN) return switch_to(j);
    const bool rev = reverse_order();
    // (a first pass over the threads not deferred, then one over all)
    for (int pass = 0; pass < 2; pass++)
        for (int d = 1; d <= g_nthreads; d++) {
            const int j = rev ? (from - d + g_nthreads) % g_nthreads : (from + d) % g_nthreads;
            const Fiber& f = g_fibers[j];
            if (f.state == RUN && (pass == 1 || !f.deferred)) return switch_to(j);
        }
    jobx_emu_switch(&g_fibers[from].sp, g_sched_sp);
}

void release_warp(int w) {
    Warp& wp = g_warps[w];
    wp.arrived = 0;
    wp.phase++;
    wake(w * 32, w * 32 + 32, WAIT_WARP);
}

void release_block() {
    g_block_arrived = 0;
    g_block_phase++;
    wake(0, g_nthreads, WAIT_BLOCK);
}

// the calling fiber arrives at its warp's barrier; returns after every live lane has
void warp_arrive() {
    Fiber& f = g_fibers[g_cur];
    Warp& wp = g_warps[f.warp];
    if (++wp.arrived == wp.live) {
        release_warp(f.warp);
        return;
    }
    f.state = WAIT_WARP;
    switch_away();
}

void land_copies(Fiber& f, size_t count);  // (cp.async, below)

[[noreturn]] void fiber_main() {
    g_call(g_params);
    Fiber& f = g_fibers[g_cur];
    // copies never waited for land when their thread ends (as on the hardware, eventually)
    land_copies(f, f.copies.size());
    f.group_ends.clear();
    f.state = DONE;
    Warp& wp = g_warps[f.warp];
    wp.live--;
    if (wp.arrived > 0 && wp.arrived == wp.live) release_warp(f.warp);
    g_block_live--;
    if (g_block_arrived > 0 && g_block_arrived == g_block_live) release_block();
    Group& gp = g_groups[f.group];
    gp.live--;
    if (gp.arrived > 0) fatal("thread exited while its warpgroup waits at a wgmma instruction");
    switch_away();  // never resumed: a finished fiber is not runnable
    __builtin_unreachable();
}
}  // namespace

const jobx_dim3& thread_idx() { return g_fibers[g_cur].tid; }
int lane() { return g_fibers[g_cur].lane; }

// The calling lane's words deposited, and its warp's 32 deposits ([lane][word]) once every live
// lane has made its own: the exchange under every warp collective.
using Slab = uint64_t[32][4];
const Slab& warp_deposit(uint64_t w0, uint64_t w1 = 0, uint64_t w2 = 0) {
    const Fiber& f = g_fibers[g_cur];
    Warp& wp = g_warps[f.warp];
    const unsigned p = wp.phase & 1;  // (the release moves the phase on)
    uint64_t* mine = wp.slab[p][f.lane];
    mine[0] = w0;
    mine[1] = w1;
    mine[2] = w2;
    warp_arrive();
    return wp.slab[p];
}

WarpDeposits warp_exchange(uint64_t v) { return {warp_deposit(v)}; }

void warp_sync() { warp_arrive(); }

bool block_sync_and(bool pred) {
    const unsigned p = g_block_phase & 1;
    g_block_and[p] = g_block_arrived == 0 ? pred : (g_block_and[p] && pred);
    if (++g_block_arrived == g_block_live) {
        release_block();
    } else {
        g_fibers[g_cur].state = WAIT_BLOCK;
        switch_away();
    }
    return g_block_and[p];
}

unsigned shared_offset(const void* p) {
    return (unsigned)((uintptr_t)p - (uintptr_t)g_dyn_smem);
}
unsigned char* shared_ptr(unsigned off) { return g_dyn_smem + (int64_t)(int32_t)off; }
unsigned char* dynamic_shared() { return g_dyn_start; }

// a bf16's bits as f32 (exact)
float bf16_bits(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float v;
    std::memcpy(&v, &u, 4);
    return v;
}

void fatal(const std::string& what) {
    const jobx_dim3 b = block_idx, t = thread_idx();
    std::fprintf(stderr, "jobx cuda-emu: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s\n",
                 g_kernel_name ? g_kernel_name : "?", b.x, b.y, b.z, t.x, t.y, t.z, what.c_str());
    std::abort();
}

// A lane's mma operands (A's four registers, B's two) deposited, and its warp's 32 when all
// have arrived: [lane][0] = a0 | a1 << 32, [1] = a2 | a3 << 32, [2] = b0 | b1 << 32.
const Slab& mma_operands(const unsigned* a, unsigned b0, unsigned b1) {
    return warp_deposit(a[0] | (uint64_t)a[1] << 32, a[2] | (uint64_t)a[3] << 32, b0 | (uint64_t)b1 << 32);
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, D = A B + C. Fragments (g = lane / 4,
// t = lane % 4): A row-major 16x16, register r of a lane holds rows g (r = 0, 2) / g + 8 (1, 3)
// and columns 2t, 2t + 1, plus 8 for r = 2, 3; B 16x8, register r holds k = 2t, 2t + 1 (+ 8 for
// r = 1) of column g; C and D rows g (elements 0, 1) / g + 8 (2, 3), columns 2t, 2t + 1.
void mma_bf16_16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    const Slab& ops = mma_operands(a, b0, b1);
    auto half = [](unsigned w, int hi) { return bf16_bits((uint16_t)(hi ? w >> 16 : w)); };
    auto areg = [&](int row, int col) {
        const uint64_t* s = ops[(row % 8) * 4 + (col % 8) / 2];
        const int r = (row >= 8 ? 1 : 0) + (col >= 8 ? 2 : 0);
        return half((unsigned)(s[r / 2] >> (32 * (r % 2))), col & 1);
    };
    auto breg = [&](int k, int n) {
        const uint64_t* s = ops[n * 4 + (k % 8) / 2];
        return half((unsigned)(s[2] >> (k >= 8 ? 32 : 0)), k & 1);
    };
    const int g = lane() / 4, t = lane() % 4;
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float acc = c[e];
        for (int k = 0; k < 16; k++) acc += areg(row, k) * breg(k, col);
        c[e] = acc;
    }
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32: A 16x32, register r holds rows g (r = 0, 2) /
// g + 8 (1, 3), columns 4t .. 4t + 3 (+ 16 for r = 2, 3), byte i column 4t + i; B 32x8, register
// r holds k = 4t .. 4t + 3 (+ 16 for r = 1) of column g; C as in the bf16 form, in s32.
void mma_s8_16832(int* c, const unsigned* a, const unsigned* b) {
    const Slab& ops = mma_operands(a, b[0], b[1]);
    auto byte = [](unsigned w, int i) { return (int)(signed char)(w >> (8 * i)); };
    auto areg = [&](int row, int col) {
        const uint64_t* s = ops[(row % 8) * 4 + (col % 16) / 4];
        const int r = (row >= 8 ? 1 : 0) + (col >= 16 ? 2 : 0);
        return byte((unsigned)(s[r / 2] >> (32 * (r % 2))), col % 4);
    };
    auto breg = [&](int k, int n) {
        const uint64_t* s = ops[n * 4 + (k % 16) / 4];
        return byte((unsigned)(s[2] >> (k >= 16 ? 32 : 0)), k % 4);
    };
    const int g = lane() / 4, t = lane() % 4;
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        uint32_t acc = (uint32_t)c[e];  // s32 accumulation wraps
        for (int k = 0; k < 32; k++) acc += (uint32_t)(areg(row, k) * breg(k, col));
        c[e] = (int)acc;
    }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane j gives the address of row j % 8 of
// matrix j / 8 (8 b16 each); register i of lane l gets matrix i's elements (l / 4, 2 (l % 4))
// and (l / 4, 2 (l % 4) + 1), or with .trans (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4).
void ldmatrix_x4(unsigned* r, unsigned addr, bool trans) {
    const Slab& rows = warp_deposit(addr);
    const int l = lane();
    for (int i = 0; i < 4; i++) {
        if (!trans) {
            const unsigned char* row = shared_ptr((unsigned)rows[i * 8 + l / 4][0]);
            std::memcpy(&r[i], row + 4 * (l % 4), 4);
        } else {
            uint16_t lo, hi;
            std::memcpy(&lo, shared_ptr((unsigned)rows[i * 8 + 2 * (l % 4)][0]) + 2 * (l / 4), 2);
            std::memcpy(&hi, shared_ptr((unsigned)rows[i * 8 + 2 * (l % 4) + 1][0]) + 2 * (l / 4), 2);
            r[i] = lo | (unsigned)hi << 16;
        }
    }
    // nobody may overwrite a row before every lane has read its elements
    warp_arrive();
}

// cp.async lands at the cp.async.wait_group that retires its group (the latest moment the
// hardware may): a thread that reads the bytes before its wait, or another thread reading them
// without the wait and a barrier, sees what was there before.
namespace {
// cp.async copies in flight per 16-byte chunk of the dynamic shared memory (issued, not yet
// landed): a wgmma whose operand a copy is still writing reads a race on the hardware, whatever
// the emulator's order makes of it (check_operands_visible)
uint16_t g_cp_inflight[DYN_BUF / 16];
uint16_t* inflight_at(const unsigned char* dst) {
    return dst >= g_dyn_smem && dst < g_dyn_smem + DYN_BUF ? &g_cp_inflight[(dst - g_dyn_smem) / 16] : nullptr;
}
void land(const Copy& c) {
    if (uint16_t* n = inflight_at(c.dst)) (*n)--;
    const int n = c.bytes < 0 ? 0 : (c.bytes > 16 ? 16 : c.bytes);
    if (n > 0) std::memcpy(c.dst, c.src, n);
    std::memset(c.dst + n, 0, 16 - n);
}
// lands the first `count` copies of the calling thread
void land_copies(Fiber& f, size_t count) {
    for (size_t i = 0; i < count; i++) land(f.copies[i]);
    f.copies.erase(f.copies.begin(), f.copies.begin() + (long)count);
    for (size_t& e : f.group_ends) e -= count;
}
}  // namespace

void cp_async16(unsigned dst, const void* src, int bytes) {
    unsigned char* d = shared_ptr(dst);
    if (dst % 16) fatal("cp.async of 16 bytes to a shared address not a multiple of 16");
    if (uint16_t* n = inflight_at(d)) (*n)++;
    g_fibers[g_cur].copies.push_back({d, src, bytes});
}

void cp_async_commit() {
    Fiber& f = g_fibers[g_cur];
    f.group_ends.push_back(f.copies.size());
}

void cp_async_wait(int n) {
    Fiber& f = g_fibers[g_cur];
    const size_t groups = f.group_ends.size();
    if (groups <= (size_t)n) return;
    const size_t retire = groups - (size_t)n;  // the oldest groups
    land_copies(f, f.group_ends[retire - 1]);
    f.group_ends.erase(f.group_ends.begin(), f.group_ends.begin() + (long)retire);
}

float ex2_ftz(float x) {
    const float y = exp2f(x);
    return std::fabs(y) < 1.17549435e-38f ? 0.0f : y;
}

// ---------------------------------------------------------------- sm_90a

// The emulated device: sm_80 (an A100: 108 multiprocessors) or, with JOBX_EMU_SM=90, sm_90 (an
// H100: 132), whose runtime choices include the sm_90a kernels below; JOBX_EMU_SM=75 a Turing
// GPU (T4), which the engine must refuse with its reason before loading any kernel.
int sm_version() {
    static const int arch[] = {80, 90, 75};
    static const int v = arch[env_choice("JOBX_EMU_SM", {"80", "90", "75"})];
    return v;
}
int multiprocessors() { return sm_version() == 90 ? 132 : 108; }

namespace {
void release_group(int g) {
    g_groups[g].arrived = 0;
    wake(g * 128, g * 128 + 128, WAIT_GROUP);
}

// A warpgroup collective (.sync.aligned over the warpgroup's 128 threads): the calling thread
// deposits four words; the last to arrive runs `action` on all 128 deposits, then every thread
// goes on. The hardware needs all four warps there: a warpgroup with exited threads is an error.
template <typename F>
void group_collective(uint64_t w0, uint64_t w1, uint64_t w2, uint64_t w3, F action) {
    Fiber& f = g_fibers[g_cur];
    Group& gp = g_groups[f.group];
    if (gp.live != 128) fatal("warpgroup instruction in a warpgroup of " + std::to_string(gp.live) + " live threads");
    uint64_t* mine = gp.slab[g_cur % 128];
    mine[0] = w0;
    mine[1] = w1;
    mine[2] = w2;
    mine[3] = w3;
    if (++gp.arrived == gp.live) {
        action(gp.slab);
        release_group(f.group);
        return;
    }
    f.state = WAIT_GROUP;
    switch_away();
}

// wgmma's shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format"): start address,
// leading and stride byte offsets (each >> 4 in 14 bits), base offset (bits 49-51) and layout
// (bits 62-63; 1 = 128-byte swizzle, the only one the kernels use).
struct Desc {
    unsigned start, lbo, sbo;
};
Desc decode(unsigned long long d) {
    if ((d >> 62) != 1) fatal("wgmma descriptor with a layout other than the 128-byte swizzle");
    if (((d >> 49) & 7) != 0) fatal("wgmma descriptor with a non-zero base offset");
    return {(unsigned)(d & 0x3FFF) << 4, (unsigned)((d >> 16) & 0x3FFF) << 4, (unsigned)((d >> 32) & 0x3FFF) << 4};
}
// 128-byte swizzle: the 16-byte chunk bits (4-6) of a shared address XOR its 128-byte row bits
// (7-9), applied to the address itself, so a start address moved inside an atom keeps the pattern
unsigned char* swizzled(unsigned addr) { return shared_ptr(addr ^ (((addr >> 7) & 7) << 4)); }
// Element addresses of the two canonical layouts (CUTLASS's GMMA descriptors, 128-byte swizzle,
// in bytes): K-major, 128-byte rows in 8-row groups SBO apart (one instruction's k, 32 bytes,
// stays inside a row, so LBO is unused); MN-major (transposed), k rows of 128 bytes in groups of
// 8 SBO apart, MN bytes past 128 LBO on.
unsigned k_major(const Desc& d, int row, int kbyte) {
    return d.start + (row / 8) * d.sbo + (row % 8) * 128 + kbyte;
}
unsigned mn_major(const Desc& d, int mnbyte, int k) {
    return d.start + (mnbyte / 128) * d.lbo + (k / 8) * d.sbo + (k % 8) * 128 + mnbyte % 128;
}

// c[0..n) += a b[0..n), n one of the wgmma widths: a fixed trip count (a multiple of the
// vector width) and unaliased rows, so that the compiler vectorises it at -O2
template <int N, typename T>
void axpy_n(T a, const T* __restrict b, T* __restrict c) {
    for (int i = 0; i < N; i++) c[i] += a * b[i];
}
template <typename T>
void axpy(int n, T a, const T* b, T* c) {
    switch (n) {
        case 64: return axpy_n<64>(a, b, c);
        case 128: return axpy_n<128>(a, b, c);
        case 256: return axpy_n<256>(a, b, c);
        default: fatal("wgmma with n = " + std::to_string(n));
    }
}

// C [64][n] = D (or 0) + A B, T = float (bf16 operands) or uint32_t (int8; s32 sums wrap, in
// unsigned arithmetic: the same bits without overflow), A(row, k) and B(col, k) given by `a`
// and `b`. A is [64][K] and B is kept as [K][n] so that C runs with k outermost: each sum
// still goes over k in order, and the inner loop over contiguous columns.
template <typename T, int K, typename FA, typename FB>
void wgmma_product(const WgmmaOp& op, FA a, FB b) {
    const int n = op.n;
    static std::vector<T> av, bv, cv;  // (one launch at a time: g_mu)
    av.assign(64 * K, T(0));
    bv.assign((size_t)K * n, T(0));
    cv.assign((size_t)64 * n, T(0));
    for (int row = 0; row < 64; row++)
        for (int k = 0; k < K; k++) av[row * K + k] = a(row, k);
    for (int col = 0; col < n; col++)
        for (int k = 0; k < K; k++) bv[(size_t)k * n + col] = b(col, k);
    // the D fragment: thread 32 w + 4 g + t, register 4 j + e holds row 16 w + g (+ 8 for
    // e >= 2), column 8 j + 2 t (+ 1 for odd e)
    auto c_at = [&](int th, int r) -> T& {
        const int w = th / 32, g = th % 32 / 4, t = th % 4, j = r / 4, e = r % 4;
        return cv[(size_t)(16 * w + g + (e >= 2 ? 8 : 0)) * n + 8 * j + 2 * t + (e & 1)];
    };
    for (int th = 0; th < 128 && op.scale_d; th++)
        for (int r = 0; r < n / 2; r++) std::memcpy(&c_at(th, r), (const T*)op.d[th] + r, sizeof(T));
    for (int row = 0; row < 64; row++)
        for (int k = 0; k < K; k++) axpy(n, av[row * K + k], &bv[(size_t)k * n], &cv[(size_t)row * n]);
    for (int th = 0; th < 128; th++)
        for (int r = 0; r < n / 2; r++) std::memcpy((T*)op.d[th] + r, &c_at(th, r), sizeof(T));
}

// One retired wgmma: D (64 x n) = A (64 x K) B^T (+ D unless scale_d = 0), K = 16 bf16 or 32
// int8, A and B through their descriptors, or A from registers: thread 32 w + 4 g + t's register
// r holds row 16 w + g (+ 8 for odd r), k = 2 t, 2 t + 1 (+ 8 for r >= 2), the mma.sync m16n8k16
// A fragment per warp.
void run_wgmma(const WgmmaOp& op) {
    const Desc da = op.a[0] ? Desc{} : decode(op.da), db = decode(op.db);
    if (op.int8) {
        auto s8 = [](unsigned addr) { return (uint32_t)(int)(signed char)*swizzled(addr); };
        wgmma_product<uint32_t, 32>(op, [&](int row, int k) { return s8(k_major(da, row, k)); },
                                    [&](int col, int k) { return s8(k_major(db, col, k)); });
        return;
    }
    auto bf16_at = [](unsigned addr) {
        uint16_t h;
        std::memcpy(&h, swizzled(addr), 2);
        return bf16_bits(h);
    };
    wgmma_product<float, 16>(
        op,
        [&](int row, int k) {
            if (!op.a[0]) return bf16_at(k_major(da, row, 2 * k));
            const unsigned reg = op.a[(row / 16) * 32 + (row % 8) * 4 + (k % 8) / 2][(row % 16 >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
            return bf16_bits((uint16_t)(k & 1 ? reg >> 16 : reg & 0xffff));
        },
        [&](int col, int k) { return bf16_at(op.trans_b ? mn_major(db, 2 * col, k) : k_major(db, col, 2 * k)); });
}

// Fails unless shared bytes [addr, addr + bytes) lie in the launch's dynamic shared memory:
// every wgmma operand and TMA destination of the kernels does, and only there is the async
// proxy's view kept. (The 128-byte swizzle moves bytes only inside their 128-byte row.)
void check_dynamic(unsigned addr, size_t bytes, const char* what) {
    const unsigned char* p = shared_ptr(addr);
    if (p < g_dyn_start || p + bytes > g_dyn_start + g_dyn_size)
        fatal(std::string(what) + " outside the launch's dynamic shared memory");
}
unsigned char* async_view(const unsigned char* p) { return g_async_view + (p - g_dyn_smem); }
bool tma_in_flight(unsigned addr);  // (below)
// Every shared-memory byte a wgmma reads (A's and B's 32 bytes of k per row, or for an N-major
// B 16 rows of k, as run_wgmma reads them) must be as the async proxy sees it when the wgmma
// is issued. Compared by 16-byte chunks, which the swizzle keeps whole.
void check_operands_visible(const WgmmaOp& op) {
    auto check = [](unsigned addr) {
        if (addr % 16) fatal("wgmma operand row at a shared address not a multiple of 16");
        check_dynamic(addr, 16, "a wgmma operand");
        const unsigned char* p = swizzled(addr);
        if (std::memcmp(p, async_view(p), 16) != 0)
            fatal("wgmma reads shared memory (offset " + std::to_string(addr) +
                  ") written through the generic proxy (a store or cp.async) with no fence.proxy.async since");
        if (tma_in_flight(addr))
            fatal("wgmma issued on shared memory (offset " + std::to_string(addr) +
                  ") that a TMA load is still writing (no wait on its mbarrier before)");
        if (*inflight_at(swizzled(addr)))
            fatal("wgmma issued on shared memory (offset " + std::to_string(addr) +
                  ") that a cp.async is still writing (no wait on its group, or on the barrier "
                  "that announces it, before)");
    };
    if (!op.a[0]) {
        const Desc da = decode(op.da);
        for (int row = 0; row < 64; row++)
            for (int kb = 0; kb < 32; kb += 16) check(k_major(da, row, kb));
    }
    const Desc db = decode(op.db);
    if (op.trans_b) {
        for (int k = 0; k < 16; k++)
            for (int mb = 0; mb < 2 * op.n; mb += 16) check(mn_major(db, mb, k));
    } else {
        for (int col = 0; col < op.n; col++)
            for (int kb = 0; kb < 32; kb += 16) check(k_major(db, col, kb));
    }
}

Mbar& mbar(unsigned bar) {
    auto it = g_mbars.find(bar);
    if (it == g_mbars.end()) fatal("mbarrier used before mbarrier.init");
    return it->second;
}
// a phase completes when its arrivals are all in and its transaction bytes all landed
void mbar_check(Mbar& m) {
    if (m.pending > 0 || m.tx != 0) return;
    m.phase ^= 1;
    m.pending = m.expected;
    wake(0, g_nthreads, SPIN, 0, true);
}

// a CUtensorMap as this emulator's cuTensorMapEncodeTiled writes it (128 opaque bytes)
struct TmaMap {
    uint64_t magic;
    const unsigned char* addr;
    uint64_t dim[2], stride;
    uint32_t box[2], esize, rank, swizzle;
};
static_assert(sizeof(TmaMap) <= 128, "a CUtensorMap is 128 bytes");
constexpr uint64_t TMA_MAGIC = 0x6a6f62782d746d61ull;  // "jobx-tma"

// JOBX_EMU_TMA=late: a TMA load lands (writes its box, completes its bytes) when a thread waits
// on its mbarrier and finds the phase open, the latest moment the hardware may, instead of at
// issue (early, the default). Early landing lets a slot released too soon be overwritten under
// the wgmma still reading it; late landing leaves stale bytes to a thread that reads a slot
// without waiting for its fill (a wrong parity, a missing wait). Each order hides what the
// other shows, so tools/test.sh runs the TMA cases in both.
bool late_tma() {
    static const bool on = env_choice("JOBX_EMU_TMA", {"early", "late"}) == 1;
    return on;
}
struct TmaCopy {
    TmaMap t;
    unsigned dst, bar;
    int c0, c1;
};
std::vector<TmaCopy> g_tma;  // issued, not landed (late mode), oldest first; reset per block
// the bytes a load's box writes (zero fill included), from its shared address on
size_t box_bytes(const TmaMap& t) { return (size_t)t.box[0] * t.esize * t.box[1]; }

// Calls f(shared address, pointer to its byte, source byte) for every byte of a load's box,
// with the 128-byte swizzle applied and zero fill out of bounds (either side).
template <typename F>
void tma_box(const TmaCopy& c, F f) {
    const TmaMap& t = c.t;
    const uint32_t row_bytes = t.box[0] * t.esize;
    for (uint32_t r = 0; r < t.box[1]; r++)
        for (uint32_t b = 0; b < row_bytes; b++) {
            const long long x = (long long)c.c0 + b / t.esize, y = (long long)c.c1 + r;
            const bool in = x >= 0 && y >= 0 && (uint64_t)x < t.dim[0] && (uint64_t)y < t.dim[1];
            const unsigned addr = c.dst + r * row_bytes + b;
            f(addr, t.swizzle == 3 ? swizzled(addr) : shared_ptr(addr),
              in ? t.addr[(uint64_t)y * t.stride + (uint64_t)x * t.esize + b % t.esize] : (unsigned char)0);
        }
}
// The async proxy may write a byte only as the generic proxy left it visible: no store or
// cp.async since the last fence.proxy.async (before the load, or while it is in flight).
void tma_check_dest(unsigned addr, const unsigned char* q) {
    if (*async_view(q) != *q)
        fatal("a TMA load overwrites shared memory (offset " + std::to_string(addr) +
              ") written through the generic proxy with no fence.proxy.async before the load, or "
              "while it was in flight");
}
// writes the box (memory and the async proxy's view) and completes its bytes on its barrier
void tma_land(const TmaCopy& c) {
    tma_box(c, [](unsigned addr, unsigned char* q, unsigned char v) {
        tma_check_dest(addr, q);
        *q = *async_view(q) = v;
    });
    Mbar& m = mbar(c.bar);
    m.tx -= (long long)box_bytes(c.t);  // complete_tx: the whole box, zero fill included
    mbar_check(m);
}
// whether shared address `addr` lies in the box of a load in flight (the swizzle keeps each
// byte in its 128-byte row, so the unswizzled range is the one the load writes)
bool tma_in_flight(unsigned addr) {
    for (const TmaCopy& c : g_tma)
        if (addr >= c.dst && addr < c.dst + box_bytes(c.t)) return true;
    return false;
}
// lands the loads in flight that complete on `bar`, oldest first; false when there were none
bool tma_land_for(unsigned bar) {
    bool any = false;
    for (size_t i = 0; i < g_tma.size();) {
        if (g_tma[i].bar != bar) {
            i++;
            continue;
        }
        const TmaCopy c = g_tma[i];
        g_tma.erase(g_tma.begin() + (long)i);
        tma_land(c);
        any = true;
    }
    return any;
}
}  // namespace

void wgmma(bool int8, int n, void* d, const unsigned* a, unsigned long long da, unsigned long long db,
           bool trans_b, int scale_d) {
    // PTX: wgmma.fence between a thread's accesses to the registers a wgmma uses (accumulators,
    // A fragments) and that wgmma, and before a warpgroup's first. Taken here as: a fence since
    // the thread's start or its last wait_group, after which it may have read or written the
    // retired accumulators (the kernels do, or write new A fragments, as CUTLASS fences every
    // k block). A missing one may let the hardware read stale registers.
    if (!g_fibers[g_cur].wg_fenced)
        fatal("wgmma.mma_async with no wgmma.fence since the thread's start or its last wgmma.wait_group");
    group_collective((uint64_t)d, (uint64_t)a, da, db, [&](const uint64_t (&slab)[128][4]) {
        WgmmaOp op{int8, trans_b, n, scale_d, slab[0][2], slab[0][3], {}, {}};
        for (int i = 0; i < 128; i++) {
            if (slab[i][2] != op.da || slab[i][3] != op.db || ((slab[i][1] != 0) != (a != nullptr)))
                fatal("wgmma with different descriptors in one warpgroup");
            op.d[i] = (void*)slab[i][0];
            op.a[i] = (const unsigned*)slab[i][1];
        }
        check_operands_visible(op);
        g_groups[g_fibers[g_cur].group].open.push_back(op);
    });
}

void wgmma_commit() {
    group_collective(0, 0, 0, 0, [](const uint64_t (&)[128][4]) {
        Group& gp = g_groups[g_fibers[g_cur].group];
        gp.pending.push_back(std::move(gp.open));
        gp.open.clear();
    });
}

void wgmma_wait(int n) {
    group_collective(0, 0, 0, 0, [n](const uint64_t (&)[128][4]) {
        Group& gp = g_groups[g_fibers[g_cur].group];
        while ((int)gp.pending.size() > n) {
            for (const WgmmaOp& op : gp.pending.front()) run_wgmma(op);
            gp.pending.pop_front();
        }
    });
    g_fibers[g_cur].wg_fenced = false;
}

void wgmma_fence() { g_fibers[g_cur].wg_fenced = true; }

void fence_mbarrier_init() {
    for (auto& b : g_mbars) b.second.visible = true;
}

// fence.proxy.async: the generic proxy's writes so far visible to the async proxy (all of
// them: the hardware's fence covers only the calling thread's, so a kernel where some thread
// skips its fence can still pass here, in the order where a fencing thread runs last). It
// also makes mbarrier initialisations visible, as fence.mbarrier_init does.
void fence_proxy_async() {
    std::memcpy(g_async_view + (g_dyn_start - g_dyn_smem), g_dyn_start, g_dyn_size);
    fence_mbarrier_init();
}

namespace {
// One thread's arrival at named barrier `id` (bar.sync or bar.arrive: `what`); true when it
// completed the phase (the waiting threads are then runnable). A thread arriving twice in one
// phase fails: the hardware would count it again and open the barrier before the threads it
// was meant to wait for (a ping-pong whose turns got out of step).
bool named_arrival(int id, int count, const char* what) {
    if (id < 1 || id > 15 || count < 32 || count % 32 != 0 || count > g_nthreads)
        fatal(std::string(what) + " " + std::to_string(id) + ", " + std::to_string(count) + " in a block of " +
              std::to_string(g_nthreads) + " threads");
    NamedBar& b = g_named[id];
    if (b.arrived == 0) b.count = count;
    if (b.count != count) fatal(std::string(what) + " " + std::to_string(id) + " with different thread counts");
    if (b.in[g_cur])
        fatal(std::string(what) + " " + std::to_string(id) + ": a thread arrives twice before the barrier opens");
    b.in[g_cur] = true;
    if (++b.arrived < b.count) return false;
    b.arrived = 0;
    std::fill(b.in.begin(), b.in.end(), false);
    wake(0, g_nthreads, WAIT_NAMED, id);
    return true;
}
}  // namespace

void named_barrier(int id, int count) {
    if (named_arrival(id, count, "bar.sync")) return;
    Fiber& f = g_fibers[g_cur];
    f.state = WAIT_NAMED;
    f.bar = id;
    switch_away();
}

// bar.arrive: counts toward the phase, never waits
void named_arrive(int id, int count) { named_arrival(id, count, "bar.arrive"); }

void mbar_init(unsigned bar, unsigned count) {
    if (count < 1 || count > (1u << 20) - 1) fatal("mbarrier.init with count " + std::to_string(count));
    g_mbars[bar] = Mbar{(int)count, (int)count, 0, 0};
}

void mbar_arrive(unsigned bar, unsigned expect_tx) {
    Mbar& m = mbar(bar);
    const unsigned phase = m.phase;
    m.tx += expect_tx;
    m.pending--;
    mbar_check(m);
    // an arrival that completed a phase yields to every other runnable thread, the woken ones
    // first (the arriving thread stays runnable, deferred): a producer's next instructions
    // (landing its later copies, say) then come after the consumers' reads of what the phase
    // announced, the order in which a consumer reading more than that phase covers reads
    // stale bytes
    if (m.phase != phase && g_woken > 0) {
        g_fibers[g_cur].deferred = true;
        switch_away();
    }
}

void mbar_wait(unsigned bar, unsigned parity) {
    // try_wait.parity p succeeds once the phase of parity p has completed, i.e. the current
    // phase's parity differs from p
    while (mbar(bar).phase == (parity & 1)) {
        if (tma_land_for(bar)) continue;
        g_fibers[g_cur].state = SPIN;
        switch_away();
    }
}

void tma_load_2d(unsigned dst, const void* map, int c0, int c1, unsigned bar) {
    TmaMap t;
    std::memcpy(&t, map, sizeof t);
    if (t.magic != TMA_MAGIC) fatal("cp.async.bulk.tensor with a tensor map cuTensorMapEncodeTiled did not write");
    if (t.rank != 2) fatal("cp.async.bulk.tensor.2d with a rank-" + std::to_string(t.rank) + " tensor map");
    if (dst % (t.swizzle == 3 ? 1024 : 128) != 0) fatal("cp.async.bulk.tensor to a misaligned shared address");
    check_dynamic(dst, box_bytes(t), "a TMA load's destination");
    if (!mbar(bar).visible)
        fatal("a TMA load completes on an mbarrier whose initialisation no fence.mbarrier_init (or "
              "fence.proxy.async) made visible to the copy engine");
    const TmaCopy c{t, dst, bar, c0, c1};
    if (!late_tma()) return tma_land(c);
    tma_box(c, [](unsigned addr, unsigned char* q, unsigned char) { tma_check_dest(addr, q); });
    g_tma.push_back(c);
    // a thread already polling this barrier can land the load now: make the pollers runnable
    // (nothing else would; they would otherwise wait for a phase only they can complete)
    wake(0, g_nthreads, SPIN);
}

unsigned long long globaltimer() {
    return (unsigned long long)std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}
// a cycle counter: strictly grows with every read
unsigned long long clock64() {
    static unsigned long long c = 0;
    return ++c;
}
unsigned smid() {
    const unsigned long long lin =
        ((unsigned long long)block_idx.z * grid_dim.y + block_idx.y) * grid_dim.x + block_idx.x;
    return (unsigned)(lin % (unsigned)multiprocessors());
}

namespace {
// Runs one launch, block after block; false (with a message) when a block cannot go on: every
// live thread waiting at barriers that can never open (divergent __syncthreads, say).
bool run_grid(void (*call)(const void*), const void* params, jobx_dim3 grid, jobx_dim3 block,
              size_t smem, std::string& err) {
    const long long nthreads = (long long)block.x * block.y * block.z;
    if (nthreads < 1 || nthreads > MAX_THREADS) {
        err = "block of " + std::to_string(nthreads) + " threads";
        return false;
    }
    g_call = call;
    g_params = params;
    grid_dim = grid;
    block_dim = block;
    g_nthreads = (int)nthreads;
    // this launch's dynamic shared memory ends where the inaccessible pages begin (128-byte
    // aligned start: at most 127 bytes of slack past its end)
    const size_t open = (smem + PAGE - 1) / PAGE * PAGE;
    if (open > DYN_BUF - PAGE) {
        err = std::to_string(smem) + " bytes of dynamic shared memory";
        return false;
    }
    g_dyn_start = g_dyn_smem + ((open - smem) & ~(size_t)127);
    g_dyn_size = smem;
    mprotect(g_dyn_smem, open, PROT_READ | PROT_WRITE);
    mprotect(g_dyn_smem + open, DYN_BUF - open, PROT_NONE);
    while ((int)g_stacks.size() < g_nthreads) {
        // a guard page below each stack: an overflow faults instead of corrupting a neighbour
        void* m = mmap(nullptr, STACK + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            err = "no memory for fiber stacks";
            return false;
        }
        mprotect(m, 4096, PROT_NONE);
        g_stacks.push_back((unsigned char*)m + 4096);
    }
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                block_idx = {bx, by, bz};
                g_block_live = g_nthreads;
                g_block_arrived = 0;
                for (int w = 0; w < (g_nthreads + 31) / 32; w++) {
                    g_warps[w].live = std::min(32, g_nthreads - 32 * w);
                    g_warps[w].arrived = 0;
                }
                for (int w = 0; w < (g_nthreads + 127) / 128; w++) {
                    g_groups[w].live = std::min(128, g_nthreads - 128 * w);
                    g_groups[w].arrived = 0;
                    g_groups[w].open.clear();
                    g_groups[w].pending.clear();
                }
                for (NamedBar& b : g_named) {
                    if (b.arrived != 0) std::fill(b.in.begin(), b.in.end(), false);
                    b.arrived = b.count = 0;
                }
                g_mbars.clear();
                g_tma.clear();
                // a GPU's shared memory is not cleared between blocks: NaN bytes, not a lucky 0
                std::memset(g_dyn_start, 0xff, smem);
                std::memset(g_cp_inflight, 0, sizeof g_cp_inflight);
                std::memset(g_async_view + (g_dyn_start - g_dyn_smem), 0xff, smem);
                for (int i = 0; i < g_nthreads; i++) {
                    Fiber& f = g_fibers[i];
                    f.tid = {(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                             (unsigned)(i / (block.x * block.y))};
                    f.warp = i / 32;
                    f.lane = i % 32;
                    f.group = i / 128;
                    f.state = RUN;
                    f.woken = false;
                    f.deferred = false;
                    f.wg_fenced = false;
                    f.copies.clear();
                    f.group_ends.clear();
                    g_woken = 0;
                    // a new fiber's stack as jobx_emu_switch leaves one: six saved registers,
                    // then fiber_main as the return address, entered with the stack pointer 8
                    // bytes below a 16-byte boundary as after a call
                    void** top = (void**)(g_stacks[i] + STACK);
                    top[-1] = nullptr;
                    top[-2] = (void*)&fiber_main;
                    for (int r = 3; r <= 8; r++) top[-r] = nullptr;
                    f.sp = &top[-8];
                }
                g_cur = reverse_order() ? g_nthreads - 1 : 0;
                jobx_emu_switch(&g_sched_sp, g_fibers[g_cur].sp);
                if (g_block_live > 0) {
                    err = "block (" + std::to_string(bx) + "," + std::to_string(by) + "," +
                          std::to_string(bz) + ") deadlocked: " + std::to_string(g_block_live) +
                          " live threads wait at barriers that cannot open";
                    return false;
                }
                if (!g_tma.empty()) {
                    err = std::to_string(g_tma.size()) + " TMA loads still in flight when the block ended";
                    return false;
                }
                // (arrivals left at a named barrier: turns that no longer match, as a
                // ping-pong's last arrive that no one waits for; the next block would inherit
                // them on the hardware's barrier)
                for (int id = 1; id < 16; id++)
                    if (g_named[id].arrived != 0) {
                        err = "named barrier " + std::to_string(id) + " ended the block with " +
                              std::to_string(g_named[id].arrived) + " of " + std::to_string(g_named[id].count) +
                              " threads arrived";
                        return false;
                    }
                for (int w = 0; w < (g_nthreads + 127) / 128; w++)
                    if (!g_groups[w].open.empty() || !g_groups[w].pending.empty()) {
                        err = "warpgroup " + std::to_string(w) + " ended with wgmma products not waited for";
                        return false;
                    }
            }
    return true;
}
}  // namespace
}  // namespace jobx_emu

// ---------------------------------------------------------------- kernels

namespace {
struct KernelEntry {
    const char* name;
    void (*call)(const void*);
    size_t param_bytes;
};
template <typename P, void (*F)(P)>
void call_kernel(const void* raw) {
    P p;
    std::memcpy(&p, raw, sizeof(P));
    F(p);
}
}  // namespace
#define JOBX_EMU_KERNEL(name, P) extern "C" void name(P);
#include "kernels.inc"
#undef JOBX_EMU_KERNEL
#define JOBX_EMU_KERNEL(name, P) {#name, call_kernel<P, name>, sizeof(P)},
static const KernelEntry KERNELS[] = {
#include "kernels.inc"
};
#undef JOBX_EMU_KERNEL

// ---------------------------------------------------------------- driver API

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
enum : int {
    OK = 0,
    ERR_INVALID_VALUE = 1,
    ERR_OUT_OF_MEMORY = 2,
    ERR_INVALID_HANDLE = 400,
    ERR_NOT_FOUND = 500,
    ERR_LAUNCH_FAILED = 719,
    ERR_NOT_SUPPORTED = 801,
    ERR_CAPTURE_UNSUPPORTED = 900,
    ERR_CAPTURE_INVALIDATED = 901,
};

namespace {
std::recursive_mutex g_mu;  // one launch or copy at a time, from any host thread
// the device's memory: 16 GiB, or JOBX_EMU_MEMORY_BYTES (tests of the out-of-memory paths)
size_t total_mem() {
    static const size_t total = [] {
        const char* v = std::getenv("JOBX_EMU_MEMORY_BYTES");
        return v && *v ? (size_t)std::strtoull(v, nullptr, 10) : (size_t)16 << 30;
    }();
    return total;
}
size_t g_used = 0, g_peak = 0;
// JOBX_EMU_PEAK_FILE: where the most memory in use at once is written when the process ends
__attribute__((destructor)) void write_peak() {
    const char* path = std::getenv("JOBX_EMU_PEAK_FILE");
    if (!path || !*path) return;
    if (FILE* f = std::fopen(path, "w")) {
        std::fprintf(f, "%zu\n", g_peak);
        std::fclose(f);
    }
}
// Every allocation ends where an inaccessible page begins, so a kernel that reads or writes
// past the end of a buffer (beyond its 256-byte rounding) faults here, where a GPU would
// mostly read its neighbour; the fault names the kernel, block and thread (on_segv). New
// memory is filled with 0xff bytes (NaN as bf16 and f32), since a GPU's is not zeroed: a
// kernel that reads what nobody wrote gives NaN instead of a lucky 0.
struct Alloc {
    void* map;
    size_t map_len, bytes;
    bool graph;  // made inside a recording: counted while its graph holds memory (below)
};
std::map<CUdeviceptr, Alloc> g_allocs;
struct sigaction g_old_segv;
void on_segv(int, siginfo_t* si, void*) {
    if (const char* kernel = jobx_emu::g_kernel_name) {
        char msg[512];
        const jobx_dim3 b = jobx_emu::block_idx, t = jobx_emu::thread_idx();
        const int n = std::snprintf(msg, sizeof msg,
                                    "jobx cuda-emu: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): "
                                    "access to %p, outside every device allocation and "
                                    "the launch's dynamic shared memory\n",
                                    kernel, b.x, b.y, b.z, t.x, t.y, t.z, si->si_addr);
        if (n > 0) (void)!write(2, msg, (size_t)n);
    }
    // the fault repeats under the previous handler (Rust's, then the default: the process ends)
    sigaction(SIGSEGV, &g_old_segv, nullptr);
}
void install_segv_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_old_segv);
}

struct Op {
    enum Kind { KERNEL, MEMSET, COPY } kind;
    const KernelEntry* k = nullptr;
    jobx_dim3 grid{}, block{};
    size_t smem = 0;  // dynamic shared memory
    std::vector<unsigned char> params;
    void* dst = nullptr;
    const void* src = nullptr;
    size_t bytes = 0;
    unsigned char value = 0;
};
// A recording's allocations are its graph's memory, as on a GPU: reserved at its first launch
// (a launch that finds no room fails with out of memory and runs nothing), held between
// launches, given back by cuDeviceGraphMemTrim or by destroying the graph.
// JOBX_EMU_GRAPH_LAUNCH_OOM=1 makes every graph's first launch fail so (tests of the fallback
// when a recorded step does not fit; the fixtures' recordings need little or no memory).
struct Graph {
    std::vector<Op> ops;
    std::vector<CUdeviceptr> mem;  // allocated inside the recording
    size_t mem_bytes = 0;
    bool resident = false;
    bool invalidated = false;  // an operation a recording cannot hold was asked for
    std::vector<CUdeviceptr> owned;  // freed inside the recording: kept for the replays
};
struct Stream {
    Graph* capture = nullptr;
};
Stream g_default_stream;
std::vector<Graph*> g_graphs;  // every instantiated graph (for the trim)
bool graph_launch_oom() {
    static const bool on = [] {
        const char* v = std::getenv("JOBX_EMU_GRAPH_LAUNCH_OOM");
        return v && std::strcmp(v, "1") == 0;
    }();
    return on;
}
void release_graph_mem(Graph* g) {
    if (!g->resident) return;
    g->resident = false;
    g_used -= g->mem_bytes;
}
// the recording this host thread began (capture mode THREAD_LOCAL, as the runtime uses): while
// it lasts, a synchronisation from this thread fails and spoils the recording, as on a GPU
thread_local Graph* g_my_capture = nullptr;
CUresult sync_point() {
    if (!g_my_capture) return OK;
    g_my_capture->invalidated = true;
    return ERR_CAPTURE_UNSUPPORTED;
}
Stream* stream_of(void* s) { return s ? (Stream*)s : &g_default_stream; }
struct Event {
    double ms = 0;
};
double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// frees an ordinary allocation; a graph's memory only with `graph` (its graph is destroyed)
void free_mem(CUdeviceptr p, bool graph = false) {
    auto it = g_allocs.find(p);
    if (it == g_allocs.end() || it->second.graph != graph) return;
    if (!graph) g_used -= it->second.bytes;
    munmap(it->second.map, it->second.map_len);
    g_allocs.erase(it);
}
void destroy_graph(Graph* g) {
    release_graph_mem(g);
    for (CUdeviceptr p : g->mem) free_mem(p, true);
    for (CUdeviceptr p : g->owned) free_mem(p);
    for (size_t i = 0; i < g_graphs.size(); i++)
        if (g_graphs[i] == g) g_graphs.erase(g_graphs.begin() + (long)i);
    delete g;
}

CUresult run_op(const Op& op) {
    switch (op.kind) {
        case Op::MEMSET:
            std::memset(op.dst, op.value, op.bytes);
            return OK;
        case Op::COPY:
            std::memmove(op.dst, op.src, op.bytes);
            return OK;
        case Op::KERNEL: {
            std::string err;
            install_segv_handler();
            jobx_emu::g_kernel_name = op.k->name;
            const bool ran = jobx_emu::run_grid(op.k->call, op.params.data(), op.grid, op.block, op.smem, err);
            jobx_emu::g_kernel_name = nullptr;
            if (!ran) {
                std::fprintf(stderr, "jobx cuda-emu: %s: %s\n", op.k->name, err.c_str());
                return ERR_LAUNCH_FAILED;
            }
            return OK;
        }
    }
    return ERR_INVALID_VALUE;
}

CUresult submit(void* stream, Op op) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    Stream* s = stream_of(stream);
    if (s->capture) {
        s->capture->ops.push_back(std::move(op));
        return OK;
    }
    return run_op(op);
}
}  // namespace

#define API extern "C" __attribute__((visibility("default"))) CUresult

API cuInit(unsigned) { return OK; }
API cuDriverGetVersion(int* v) { *v = 12090; return OK; }
API cuDeviceGetCount(int* n) { *n = 1; return OK; }
API cuDeviceGet(int* d, int ordinal) {
    if (ordinal != 0) return ERR_INVALID_VALUE;
    *d = 0;
    return OK;
}
API cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, len, "jobx cuda-emu (host emulation of an sm_%d device)", jobx_emu::sm_version());
    return OK;
}
API cuDeviceTotalMem_v2(size_t* b, int) { *b = total_mem(); return OK; }
API cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
        case 75: *v = jobx_emu::sm_version() / 10; break;  // compute capability major
        case 76: *v = jobx_emu::sm_version() % 10; break;    // minor
        case 16: *v = jobx_emu::multiprocessors(); break;    // (as an A100 / H100)
        case 38: *v = (jobx_emu::sm_version() == 90 ? 50 : 40) << 20; break;  // L2 bytes
        case 97: *v = 232448; break;       // shared memory per block, opt-in
        case 8: *v = 49152; break;         // shared memory per block
        case 1: *v = 1024; break;          // threads per block
        case 10: *v = 32; break;           // warp size
        case 115: *v = 1; break;           // memory pools supported
        default: *v = 0;
    }
    return OK;
}
API cuDeviceGetUuid(void* u, int) { std::memset(u, 0, 16); return OK; }
API cuDeviceGetUuid_v2(void* u, int) { std::memset(u, 0, 16); return OK; }
static int g_ctx_token;
API cuDevicePrimaryCtxRetain(void** ctx, int) { *ctx = &g_ctx_token; return OK; }
API cuDevicePrimaryCtxRelease_v2(int) { return OK; }
API cuDevicePrimaryCtxRelease(int) { return OK; }
static thread_local void* g_current_ctx = nullptr;
API cuCtxSetCurrent(void* c) { g_current_ctx = c; return OK; }
API cuCtxGetCurrent(void** c) { *c = g_current_ctx; return OK; }
API cuCtxPushCurrent_v2(void* c) { g_current_ctx = c; return OK; }
API cuCtxPopCurrent_v2(void** c) { if (c) *c = g_current_ctx; return OK; }
API cuCtxGetDevice(int* d) { *d = 0; return OK; }
API cuCtxSynchronize() { return sync_point(); }
API cuCtxGetFlags(unsigned* f) { *f = 0; return OK; }
API cuCtxSetFlags(unsigned) { return OK; }
API cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    *free_b = total_mem() - g_used;
    *total = total_mem();
    return OK;
}
API cuDeviceGetDefaultMemPool(void** pool, int) { *pool = &g_ctx_token; return OK; }
API cuMemPoolSetAttribute(void*, int, void*) { return OK; }
API cuDeviceGraphMemTrim(int) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    for (Graph* g : g_graphs) release_graph_mem(g);
    return OK;
}

API cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void* stream) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    Graph* graph = stream_of(stream)->capture;
    const size_t rounded = (bytes + 255) / 256 * 256;
    // (a recording's allocation gets its memory at the graph's first launch)
    if (!graph && (bytes > total_mem() - g_used || rounded > total_mem() - g_used)) return ERR_OUT_OF_MEMORY;
    if (bytes > total_mem()) return ERR_OUT_OF_MEMORY;
    const size_t bytes_kept = rounded ? rounded : 256, page = 4096;
    const size_t data = (bytes_kept + page - 1) / page * page;
    void* m = mmap(nullptr, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return ERR_OUT_OF_MEMORY;
    mprotect((unsigned char*)m + data, page, PROT_NONE);
    unsigned char* start = (unsigned char*)m + data - bytes_kept;  // 256-byte aligned
    std::memset(start, 0xff, bytes_kept);
    *p = (CUdeviceptr)start;
    g_allocs[*p] = {m, data + page, bytes_kept, graph != nullptr};
    if (graph) {
        graph->mem.push_back(*p);
        graph->mem_bytes += bytes_kept;
        return OK;
    }
    g_used += bytes_kept;
    g_peak = std::max(g_peak, g_used);
    return OK;
}
API cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return cuMemAllocAsync(p, bytes, nullptr); }
API cuMemFreeAsync(CUdeviceptr p, void* stream) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    Stream* s = stream_of(stream);
    if (s->capture) {
        // the recorded work may still use it on every replay: the graph frees it (its own
        // allocations are its memory anyway)
        auto it = g_allocs.find(p);
        if (it != g_allocs.end() && !it->second.graph) s->capture->owned.push_back(p);
        return OK;
    }
    free_mem(p);
    return OK;
}
API cuMemFree_v2(CUdeviceptr p) { return cuMemFreeAsync(p, nullptr); }
API cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, void* s) {
    Op op{Op::MEMSET};
    op.dst = (void*)p;
    op.value = v;
    op.bytes = n;
    return submit(s, std::move(op));
}
API cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) { return cuMemsetD8Async(p, v, n, nullptr); }
static CUresult copy(void* dst, const void* src, size_t n, void* s) {
    Op op{Op::COPY};
    op.dst = dst;
    op.src = src;
    op.bytes = n;
    return submit(s, std::move(op));
}
API cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* h, size_t n, void* s) { return copy((void*)d, h, n, s); }
API cuMemcpyDtoHAsync_v2(void* h, CUdeviceptr d, size_t n, void* s) { return copy(h, (const void*)d, n, s); }
API cuMemcpyDtoDAsync_v2(CUdeviceptr d, CUdeviceptr src, size_t n, void* s) {
    return copy((void*)d, (const void*)src, n, s);
}
API cuMemcpyHtoD_v2(CUdeviceptr d, const void* h, size_t n) { return copy((void*)d, h, n, nullptr); }
API cuMemcpyDtoH_v2(void* h, CUdeviceptr d, size_t n) { return copy(h, (const void*)d, n, nullptr); }

API cuStreamCreate(void** s, unsigned) { *s = new Stream(); return OK; }
API cuStreamCreateWithPriority(void** s, unsigned, int) { *s = new Stream(); return OK; }
API cuStreamDestroy_v2(void* s) {
    if (s) delete (Stream*)s;
    return OK;
}
API cuStreamSynchronize(void* stream) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    if (Graph* g = stream_of(stream)->capture) {
        g->invalidated = true;
        return ERR_CAPTURE_UNSUPPORTED;
    }
    return sync_point();
}
API cuStreamQuery(void*) { return OK; }
API cuStreamWaitEvent(void*, void*, unsigned) { return OK; }
API cuStreamBeginCapture_v2(void* stream, int) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    Stream* s = stream_of(stream);
    if (s->capture) return ERR_INVALID_VALUE;
    s->capture = new Graph();
    g_my_capture = s->capture;
    return OK;
}
API cuStreamEndCapture(void* stream, void** graph) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    Stream* s = stream_of(stream);
    if (!s->capture) return ERR_INVALID_VALUE;
    Graph* g = s->capture;
    s->capture = nullptr;
    if (g_my_capture == g) g_my_capture = nullptr;
    if (g->invalidated) {
        destroy_graph(g);
        *graph = nullptr;
        return ERR_CAPTURE_INVALIDATED;
    }
    g_graphs.push_back(g);
    *graph = g;
    return OK;
}
API cuStreamIsCapturing(void* stream, int* status) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    *status = stream_of(stream)->capture ? 1 : 0;
    return OK;
}
API cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) {
    *exec = graph;
    return OK;
}
API cuGraphLaunch(void* exec, void* stream) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    if (!exec) return ERR_INVALID_HANDLE;
    if (stream_of(stream)->capture) return ERR_NOT_SUPPORTED;
    Graph* g = (Graph*)exec;
    if (!g->resident) {
        if (g->mem_bytes > total_mem() - g_used || graph_launch_oom()) return ERR_OUT_OF_MEMORY;
        g->resident = true;
        g_used += g->mem_bytes;
        g_peak = std::max(g_peak, g_used);
    }
    for (const Op& op : g->ops) {
        const CUresult r = run_op(op);
        if (r != OK) return r;
    }
    return OK;
}
API cuGraphExecDestroy(void*) { return OK; }  // the exec is its graph
API cuGraphDestroy(void* graph) {
    std::lock_guard<std::recursive_mutex> lock(g_mu);
    destroy_graph((Graph*)graph);
    return OK;
}

API cuEventCreate(void** e, unsigned) { *e = new Event(); return OK; }
API cuEventDestroy_v2(void* e) { delete (Event*)e; return OK; }
API cuEventRecord(void* e, void*) { ((Event*)e)->ms = now_ms(); return OK; }
API cuEventRecordWithFlags(void* e, void*, unsigned) { ((Event*)e)->ms = now_ms(); return OK; }
API cuEventSynchronize(void*) { return sync_point(); }
API cuEventQuery(void*) { return OK; }
API cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = (float)(((Event*)b)->ms - ((Event*)a)->ms);
    return OK;
}
API cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

static int g_module_token;
API cuModuleLoadData(void** m, const void*) { *m = &g_module_token; return OK; }
API cuModuleUnload(void*) { return OK; }
API cuModuleGetFunction(void** f, void*, const char* name) {
    for (const KernelEntry& k : KERNELS)
        if (std::strcmp(k.name, name) == 0) {
            *f = (void*)&k;
            return OK;
        }
    return ERR_NOT_FOUND;
}
API cuFuncSetAttribute(void*, int attr, int value) {
    // the dynamic shared memory a kernel may ask for (attribute 8)
    if (attr == 8 && value > (int)jobx_emu::DYN_MAX) return ERR_INVALID_VALUE;
    return OK;
}
API cuFuncGetAttribute(int* v, int attr, void*) {
    *v = attr == 0 ? 1024 : 0;  // max threads per block
    return OK;
}

static CUresult launch(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, unsigned smem, void* stream, void** params) {
    const KernelEntry* k = (const KernelEntry*)f;
    if (!k || !params) return ERR_INVALID_VALUE;
    if (smem > jobx_emu::DYN_MAX) return ERR_INVALID_VALUE;
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return ERR_INVALID_VALUE;
    Op op{Op::KERNEL};
    op.k = k;
    op.grid = {gx, gy, gz};
    op.block = {bx, by, bz};
    op.smem = smem;
    const unsigned char* p = (const unsigned char*)params[0];
    op.params.assign(p, p + k->param_bytes);
    return submit(stream, std::move(op));
}
API cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, unsigned smem, void* stream, void** params, void**) {
    return launch(f, gx, gy, gz, bx, by, bz, smem, stream, params);
}
struct LaunchConfig {
    unsigned gx, gy, gz, bx, by, bz, smem;
    void* stream;
    void* attrs;
    unsigned nattrs;
};
API cuLaunchKernelEx(const LaunchConfig* c, void* f, void** params, void**) {
    return launch(f, c->gx, c->gy, c->gz, c->bx, c->by, c->bz, c->smem, c->stream, params);
}
// A tiled TMA descriptor, checked as the driver documents (CUDA driver API, "Tensor Map Object
// Management"), kept in this emulator's own form (TmaMap) for tma_load_2d. Only what the sm_90a
// kernels load is supported: rank 2, unit element strides, no interleave.
API cuTensorMapEncodeTiled(void* map, int dtype, unsigned rank, void* addr, const uint64_t* dims,
                           const uint64_t* strides, const unsigned* box, const unsigned* estrides,
                           int interleave, int swizzle, int, int oob_fill) {
    static const unsigned ESIZE[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2};  // UINT8 .. BFLOAT16
    if (!map || !addr || dtype < 0 || dtype > 9 || rank < 1 || rank > 5) return ERR_INVALID_VALUE;
    if ((uintptr_t)addr % 16 != 0 || swizzle < 0 || swizzle > 3 || oob_fill < 0 || oob_fill > 1)
        return ERR_INVALID_VALUE;
    const unsigned es = ESIZE[dtype];
    for (unsigned i = 0; i < rank; i++) {
        if (dims[i] == 0 || dims[i] > (1ull << 32) || box[i] == 0 || box[i] > 256 || estrides[i] == 0 ||
            estrides[i] > 8)
            return ERR_INVALID_VALUE;
        if (i + 1 < rank && (strides[i] % 16 != 0 || strides[i] >= (1ull << 40))) return ERR_INVALID_VALUE;
    }
    const unsigned inner = box[0] * es;
    if (inner % 16 != 0) return ERR_INVALID_VALUE;
    static const unsigned SWIZZLE_SPAN[] = {0, 32, 64, 128};
    if (swizzle > 0 && inner > SWIZZLE_SPAN[swizzle]) return ERR_INVALID_VALUE;
    if (rank != 2 || interleave != 0 || estrides[0] != 1 || estrides[1] != 1 || (swizzle != 0 && swizzle != 3))
        return ERR_NOT_SUPPORTED;
    jobx_emu::TmaMap t{jobx_emu::TMA_MAGIC, (const unsigned char*)addr, {dims[0], dims[1]}, strides[0],
                       {box[0], box[1]}, es, rank, (uint32_t)swizzle};
    std::memset(map, 0, 128);
    std::memcpy(map, &t, sizeof t);
    return OK;
}

static const char* error_text(CUresult r) {
    switch (r) {
        case OK: return "no error";
        case ERR_INVALID_VALUE: return "invalid argument";
        case ERR_OUT_OF_MEMORY: return "out of memory";
        case ERR_INVALID_HANDLE: return "invalid resource handle";
        case ERR_NOT_FOUND: return "named symbol not found";
        case ERR_LAUNCH_FAILED: return "unspecified launch failure (emulated block could not finish)";
        case ERR_NOT_SUPPORTED: return "operation not supported (by the emulated device)";
        case ERR_CAPTURE_UNSUPPORTED: return "operation not permitted when stream is capturing";
        case ERR_CAPTURE_INVALIDATED: return "operation failed due to a previous error during capture";
        default: return "unknown error";
    }
}
static const char* error_name(CUresult r) {
    switch (r) {
        case OK: return "CUDA_SUCCESS";
        case ERR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case ERR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case ERR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case ERR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case ERR_LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
        case ERR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        case ERR_CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
        case ERR_CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
        default: return "CUDA_ERROR_UNKNOWN";
    }
}
API cuGetErrorString(CUresult r, const char** s) { *s = error_text(r); return OK; }
API cuGetErrorName(CUresult r, const char** s) { *s = error_name(r); return OK; }
