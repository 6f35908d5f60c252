// SPDX-License-Identifier: BSL-1.0
#include "common/jobs.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

namespace qed::tools {

namespace {

struct pool_state {
    std::uint64_t count = 0;
    std::uint64_t next = 0;
    std::uint64_t completed = 0;
    unsigned in_flight = 0;
    bool starting = false;  // guards against recursion when a job completes inline
    std::error_code first_error;
    job_fn job;
    job_options options;

    bool may_start() const {
        return next < count && in_flight < options.depth && !first_error && !(options.stop && options.stop());
    }
};

void start_more(const std::shared_ptr<pool_state>& s) {
    if (s->starting) return;
    s->starting = true;
    while (s->may_start()) {
        const std::uint64_t index = s->next++;
        ++s->in_flight;
        s->job(index, [s](std::error_code ec) {
            --s->in_flight;
            ++s->completed;
            if (ec && !s->first_error) s->first_error = ec;
            if (s->options.progress) s->options.progress(s->completed);
            start_more(s);
        });
    }
    s->starting = false;
}

}  // namespace

std::error_code run_jobs(driver& d, std::uint64_t count, job_fn job, job_options options) {
    auto s = std::make_shared<pool_state>();
    s->count = count;
    s->job = std::move(job);
    s->options = std::move(options);
    if (s->options.depth == 0) s->options.depth = 1;
    start_more(s);
    const bool finished = d.run_until([&s] { return s->in_flight == 0 && !s->may_start(); });
    // Break the cycle job -> captured state, in case a job kept a reference.
    auto ec = finished ? s->first_error : never_completed();
    s->job = nullptr;
    return ec;
}

void run_steps(std::shared_ptr<std::vector<step_fn>> steps, job_done done, std::size_t first) {
    if (first == steps->size()) return done({});
    step_fn& s = (*steps)[first];
    s([steps, first, done](std::error_code ec) {
        if (ec) return done(ec);
        run_steps(steps, done, first + 1);
    });
}

namespace {

constexpr std::size_t buffer_align = 4096;

// Freed buffers are kept for reuse: copying commands allocate one or two
// buffers per cell, and fresh memory costs a page fault per page.
// (Buffers are only made and freed on the event loop's thread.)
struct free_buffer {
    std::size_t size;
    std::byte* data;
};
struct free_buffers : std::vector<free_buffer> {
    free_buffers() = default;
    free_buffers(const free_buffers&) = delete;
    free_buffers& operator=(const free_buffers&) = delete;
    ~free_buffers() {
        for (const auto& b : *this) std::free(b.data);
    }
};
free_buffers& free_list() {
    static free_buffers list;
    return list;
}
constexpr std::size_t max_free = 64;

}  // namespace

aligned_buffer::aligned_buffer(std::size_t size) : size_(size) {
    const std::size_t rounded = std::max(buffer_align, (size + buffer_align - 1) / buffer_align * buffer_align);
    auto& list = free_list();
    for (std::size_t i = 0; i < list.size(); ++i) {
        if (list[i].size == rounded) {
            data_.reset(list[i].data);
            data_.get_deleter().size = rounded;
            list[i] = list.back();
            list.pop_back();
            return;
        }
    }
    void* p = std::aligned_alloc(buffer_align, rounded);
    if (!p) throw std::bad_alloc();
    data_.reset(static_cast<std::byte*>(p));
    data_.get_deleter().size = rounded;
}

void aligned_buffer::release::operator()(std::byte* p) const noexcept {
    auto& list = free_list();
    if (list.size() < max_free) {
        try {
            list.push_back({size, p});
            return;
        } catch (...) {
        }
    }
    std::free(p);
}

bool is_zero(const std::byte* p, std::size_t n) noexcept {
    // Compare in words where possible; the buffer is usually aligned.
    std::size_t i = 0;
    for (; i + sizeof(std::uint64_t) <= n; i += sizeof(std::uint64_t)) {
        std::uint64_t w;
        std::memcpy(&w, p + i, sizeof w);
        if (w) return false;
    }
    for (; i < n; ++i)
        if (p[i] != std::byte{0}) return false;
    return true;
}

}  // namespace qed::tools
