// SPDX-License-Identifier: BSL-1.0
#include "table/table.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cstring>
#include <new>

#include "block_file/completion.hpp"
#include "format/layout.hpp"

namespace qed::detail {

namespace {
constexpr std::size_t map_threshold = 8u << 20;  // zeroed buffers this large are mapped
}

void aligned_free::operator()(void* p) const noexcept {
    if (mapped)
        ::munmap(p, mapped);
    else
        std::free(p);
}

aligned_bytes allocate_aligned(std::size_t n, bool zeroed) {
    const std::size_t rounded = (std::max<std::size_t>(n, 1) + memory_alignment - 1) & ~(memory_alignment - 1);
    if (zeroed && rounded >= map_threshold) {
        // Anonymous pages read as zeros and are only backed once touched.
        void* m = ::mmap(nullptr, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) throw std::bad_alloc();
        return aligned_bytes(static_cast<std::byte*>(m), aligned_free{rounded});
    }
    void* p = std::aligned_alloc(memory_alignment, rounded);
    if (!p) throw std::bad_alloc();
    if (zeroed) std::memset(p, 0, rounded);
    return aligned_bytes(static_cast<std::byte*>(p));
}

std::span<const std::byte> zero_block() noexcept {
    static constexpr std::size_t size = 1024 * 1024;
    alignas(memory_alignment) static const std::byte zeros[size] = {};
    return {zeros, size};
}

table::table(std::uint32_t entries)
    : entries_(entries), bytes_(allocate_aligned(std::size_t{entries} * sizeof(std::uint64_t), true)) {}

void append_zeros(const_buffers& out, std::uint64_t len) {
    const auto z = zero_block();
    while (len) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(len, z.size()));
        out.emplace_back(z.data(), n);
        len -= n;
    }
}

void table::from_disk() noexcept {
    convert_entries(data(), data(), entries_);
}

void table::grow(std::uint32_t entries) {
    if (entries <= entries_) return;
    aligned_bytes bigger = allocate_aligned(std::size_t{entries} * sizeof(std::uint64_t), true);
    std::memcpy(bigger.get(), bytes_.get(), byte_size());
    bytes_ = std::move(bigger);
    entries_ = entries;
}

void async_read_table(block_file& file, std::uint64_t offset, table& t, op_handler handler) {
    const boost::asio::mutable_buffer buf(t.raw(), t.byte_size());
    file.async_read_at(offset, {&buf, 1}, [&t, h = std::move(handler)](std::error_code ec, std::size_t) mutable {
        if (!ec) t.from_disk();
        std::move(h)(ec);
    });
}

namespace {

// One sparse table read: the data runs of the table's range, read in pieces
// of at most 16 MiB, all in flight at once.
// Ownership: shared by the reads in flight; gone with the last of them.
struct sparse_read {
    table& t;
    op_handler handler;
    fan_in group;
    void one_done(const std::shared_ptr<sparse_read>& self, std::error_code ec) {
        if (!group.done(ec)) return;
        if (!group.error()) t.from_disk();
        auto h = std::move(self->handler);
        std::move(h)(group.error());
    }
};

}  // namespace

void async_read_table_sparse(block_file& file, std::uint64_t offset, table& t, op_handler handler) {
    constexpr std::uint64_t max_piece = 16u << 20;
    auto r = std::make_shared<sparse_read>(sparse_read{t, std::move(handler), {}});
    r->group.open();
    const std::uint64_t bytes = t.byte_size();
    for (std::uint64_t at = 0; at < bytes;) {
        bool data = true;
        std::uint64_t run = bytes - at;
        if (file.allocation(offset + at, bytes - at, data, run)) {  // the file can't tell: read it all
            data = true;
            run = bytes - at;
        }
        run = std::clamp<std::uint64_t>(run, 1, bytes - at);
        for (std::uint64_t p = at; data && p < at + run;) {
            const std::uint64_t n = std::min(max_piece, at + run - p);
            const boost::asio::mutable_buffer buf(t.raw() + p, static_cast<std::size_t>(n));
            r->group.add();
            file.async_read_at(offset + p, {&buf, 1}, [r](std::error_code ec, std::size_t) { r->one_done(r, ec); });
            p += n;
        }
        at += run;
    }
    // Nothing to read (a table that is all holes): complete later all the same.
    if (r->group.close())
        boost::asio::post(file.get_executor(), [r] {
            auto h = std::move(r->handler);
            std::move(h)(std::error_code{});
        });
}

void async_write_table(block_file& file, std::uint64_t offset, const table& t, std::uint32_t first, std::uint32_t count,
                       std::size_t align, op_handler handler) {
    const std::size_t begin = (std::size_t{first} * 8) / align * align;
    const std::size_t end = std::min(t.byte_size(), (std::size_t{first + count} * 8 + align - 1) / align * align);
    const auto* base = reinterpret_cast<const std::byte*>(t.data());
    if constexpr (std::endian::native == std::endian::little) {
        // On-disk and in-memory layouts agree: write straight from the table.
        const boost::asio::const_buffer buf(base + begin, end - begin);
        file.async_write_at(offset + begin, {&buf, 1},
                            [h = std::move(handler)](std::error_code ec, std::size_t) mutable { std::move(h)(ec); });
    } else {
        auto copy = std::make_shared<aligned_bytes>(allocate_aligned(end - begin, false));
        convert_entries(t.data() + begin / 8, reinterpret_cast<std::uint64_t*>(copy->get()), (end - begin) / 8);
        const boost::asio::const_buffer buf(copy->get(), end - begin);
        file.async_write_at(
            offset + begin, {&buf, 1},
            [copy, h = std::move(handler)](std::error_code ec, std::size_t) mutable { std::move(h)(ec); });
    }
}

}  // namespace qed::detail
