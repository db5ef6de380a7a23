// The emulated device: a stand-in libcuda.so whose kernels are kernels/*.cu compiled as host C++
// (tools/cuda-emu/README.md says why and what it does not cover). Two halves:
//   1. a block runner: each CUDA thread of a block is a fiber on the calling host
//      thread; __syncthreads and the warp collectives (shuffles, mma.sync, ldmatrix) are barriers
//      at which a fiber yields until every live thread of its block / warp has arrived;
//   2. the driver API entry points the Rust runtime (through cudarc) calls, over host memory:
//      device pointers are host pointers, every stream runs its work at once, in order, and a
//      stream capture records the work for a graph to replay.
// The device reports compute capability 8.0, so the runtime loads no sm_90a module (wgmma and
// TMA are not emulated) and picks the same kernels as on an A100.
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

namespace {
enum State { RUN, WAIT_WARP, WAIT_BLOCK, DONE };
struct Fiber {
    void* sp = nullptr;
    jobx_dim3 tid;
    int warp = 0, lane = 0;
    State state = DONE;
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
// dynamic shared memory (and the base of the shared-window offsets)
alignas(128) unsigned char g_dyn_smem[232448];
std::vector<Fiber> g_fibers(MAX_THREADS);
std::vector<unsigned char*> g_stacks;
Warp g_warps[MAX_THREADS / 32];
int g_block_live = 0, g_block_arrived = 0, g_nthreads = 0;
unsigned g_block_phase = 0;
bool g_block_and[2];
int g_cur = 0;
void* g_sched_sp = nullptr;  // the launching host code's stack while fibers run
void (*g_call)(const void*) = nullptr;
const void* g_params = nullptr;

// Leaves the current fiber (blocked or done) for the next runnable one after it, or for the
// launching code when none can run (the block is done, or deadlocked).
void switch_away() {
    const int from = g_cur;
    for (int d = 1; d <= g_nthreads; d++) {
        const int j = (from + d) % g_nthreads;
        if (g_fibers[j].state == RUN) {
            g_cur = j;
            jobx_emu_switch(&g_fibers[from].sp, g_fibers[j].sp);
            return;
        }
    }
    jobx_emu_switch(&g_fibers[from].sp, g_sched_sp);
}

void release_warp(int w) {
    Warp& wp = g_warps[w];
    wp.arrived = 0;
    wp.phase++;
    for (int i = w * 32; i < g_nthreads && i < w * 32 + 32; i++)
        if (g_fibers[i].state == WAIT_WARP) g_fibers[i].state = RUN;
}

void release_block() {
    g_block_arrived = 0;
    g_block_phase++;
    for (int i = 0; i < g_nthreads; i++)
        if (g_fibers[i].state == WAIT_BLOCK) g_fibers[i].state = RUN;
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

[[noreturn]] void fiber_main() {
    g_call(g_params);
    Fiber& f = g_fibers[g_cur];
    f.state = DONE;
    Warp& wp = g_warps[f.warp];
    wp.live--;
    if (wp.arrived > 0 && wp.arrived == wp.live) release_warp(f.warp);
    g_block_live--;
    if (g_block_arrived > 0 && g_block_arrived == g_block_live) release_block();
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
unsigned char* dynamic_shared() { return g_dyn_smem; }

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
    auto half = [](unsigned w, int hi) {
        const uint32_t u = (hi ? w >> 16 : w & 0xffffu) << 16;
        float v;
        std::memcpy(&v, &u, 4);
        return v;
    };
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

void cp_async16(unsigned dst, const void* src, int bytes) {
    unsigned char* d = shared_ptr(dst);
    const int n = bytes < 0 ? 0 : (bytes > 16 ? 16 : bytes);
    if (n > 0) std::memcpy(d, src, n);
    std::memset(d + n, 0, 16 - n);
}

float ex2_ftz(float x) {
    const float y = exp2f(x);
    return std::fabs(y) < 1.17549435e-38f ? 0.0f : y;
}

namespace {
// Runs one launch, block after block; false (with a message) when a block cannot go on: every
// live thread waiting at barriers that can never open (divergent __syncthreads, say).
bool run_grid(void (*call)(const void*), const void* params, jobx_dim3 grid, jobx_dim3 block,
              std::string& err) {
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
                for (int i = 0; i < g_nthreads; i++) {
                    Fiber& f = g_fibers[i];
                    f.tid = {(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                             (unsigned)(i / (block.x * block.y))};
                    f.warp = i / 32;
                    f.lane = i % 32;
                    f.state = RUN;
                    // a new fiber's stack as jobx_emu_switch leaves one: six saved registers,
                    // then fiber_main as the return address, entered with the stack pointer 8
                    // bytes below a 16-byte boundary as after a call
                    void** top = (void**)(g_stacks[i] + STACK);
                    top[-1] = nullptr;
                    top[-2] = (void*)&fiber_main;
                    for (int r = 3; r <= 8; r++) top[-r] = nullptr;
                    f.sp = &top[-8];
                }
                g_cur = 0;
                jobx_emu_switch(&g_sched_sp, g_fibers[0].sp);
                if (g_block_live > 0) {
                    err = "block (" + std::to_string(bx) + "," + std::to_string(by) + "," +
                          std::to_string(bz) + ") deadlocked: " + std::to_string(g_block_live) +
                          " live threads wait at barriers that cannot open";
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
const char* g_kernel = nullptr;  // the kernel running, for on_segv
struct sigaction g_old_segv;
void on_segv(int, siginfo_t* si, void*) {
    if (g_kernel) {
        char msg[512];
        const jobx_dim3 b = jobx_emu::block_idx, t = jobx_emu::thread_idx();
        const int n = std::snprintf(msg, sizeof msg,
                                    "jobx cuda-emu: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): "
                                    "access to %p, outside every device allocation\n",
                                    g_kernel, b.x, b.y, b.z, t.x, t.y, t.z, si->si_addr);
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
            g_kernel = op.k->name;
            const bool ran = jobx_emu::run_grid(op.k->call, op.params.data(), op.grid, op.block, err);
            g_kernel = nullptr;
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
    std::snprintf(name, len, "jobx cuda-emu (host emulation of an sm_80 device)");
    return OK;
}
API cuDeviceTotalMem_v2(size_t* b, int) { *b = total_mem(); return OK; }
API cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
        case 75: *v = 8; break;            // compute capability major
        case 76: *v = 0; break;            // minor
        case 16: *v = 108; break;          // multiprocessors (as an A100)
        case 38: *v = 40 << 20; break;     // L2 bytes
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
    if (attr == 8 && value > (int)sizeof(jobx_emu::g_dyn_smem)) return ERR_INVALID_VALUE;
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
    if (smem > sizeof(jobx_emu::g_dyn_smem)) return ERR_INVALID_VALUE;
    if (gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return ERR_INVALID_VALUE;
    Op op{Op::KERNEL};
    op.k = k;
    op.grid = {gx, gy, gz};
    op.block = {bx, by, bz};
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
API cuTensorMapEncodeTiled(void*, ...) { return ERR_NOT_SUPPORTED; }

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
