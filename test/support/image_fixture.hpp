// SPDX-License-Identifier: BSL-1.0
// Shared helpers for the image-level tests (test_image, test_check,
// test_api): the geometries they run across, an in-memory environment with
// create/open shortcuts, raw access to the stored bytes (header, L1, L2
// entries), and position-dependent byte patterns that catch misplaced data.
#pragma once

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/test/unit_test.hpp>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "qed/image.hpp"
#include "support/memory_fs.hpp"
#include "support/sync.hpp"

namespace qed::test {

inline constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

/// A cluster size and a table size.
struct layout {
    std::uint32_t cs;
    std::uint32_t ts;

    std::uint64_t table_bytes() const { return std::uint64_t{cs} * ts; }
    std::uint64_t entries() const { return table_bytes() / 8; }
    /// Guest bytes one L2 table covers.
    std::uint64_t span() const { return entries() * cs; }
    /// File size of a fresh image: header cluster + L1 table.
    std::uint64_t fresh_file_size() const { return std::uint64_t{cs} + table_bytes(); }
};
inline std::ostream& operator<<(std::ostream& os, const layout& l) {
    return os << "cluster " << l.cs << " table " << l.ts;
}
/// Cluster sizes 4K and 64K by table sizes 1, 4 and 16.
inline const layout all_layouts[] = {{4096, 1}, {4096, 4}, {4096, 16}, {65536, 1}, {65536, 4}, {65536, 16}};

/// The byte a pattern with `seed` holds at guest offset `pos` (varies per
/// byte, so data landing at the wrong offset or from the wrong level shows).
inline std::uint8_t pattern_byte(std::uint64_t pos, unsigned seed) {
    const std::uint64_t x = (pos >> 3) * 0x9E3779B1u + (pos & 7) * 131u + seed * 0x5bd1e995u;
    const auto b = static_cast<std::uint8_t>((x >> 13) ^ (x >> 5) ^ seed);
    return b ? b : 1;  // never 0: a pattern is never confused with zeros
}
inline std::vector<std::uint8_t> pattern(std::uint64_t pos, std::size_t n, unsigned seed) {
    std::vector<std::uint8_t> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = pattern_byte(pos + i, seed);
    return v;
}
/// Index of the first byte of `got` (guest offset `pos`) that isn't the
/// pattern `seed` (seed 0: zeros), or -1.
inline long first_mismatch(const std::vector<std::uint8_t>& got, std::size_t from, std::size_t to, std::uint64_t pos,
                           unsigned seed) {
    for (std::size_t i = from; i < to; ++i) {
        const std::uint8_t want = seed ? pattern_byte(pos + i, seed) : 0;
        if (got[i] != want) return static_cast<long>(i);
    }
    return -1;
}

/// An io_context with an in-memory filesystem.
struct mem_env {
    boost::asio::io_context ioc;
    memory_fs fs{ioc.get_executor()};

    create_options create_opts(std::uint64_t size, layout l = {65536, 4}) {
        create_options o;
        o.size = size;
        o.cluster_size = l.cs;
        o.table_size = l.ts;
        o.opener = fs.opener();
        return o;
    }
    open_options open_opts() {
        open_options o;
        o.opener = fs.opener();
        return o;
    }
    void create(const std::string& name, const create_options& o) {
        const auto ec = qed::test::create(ioc, name, o);
        BOOST_TEST_REQUIRE(!ec, "create " << name << ": " << ec.message());
    }
    sync_image open(const std::string& name, open_options o) {
        auto [ec, img] = qed::test::open(ioc, name, std::move(o));
        BOOST_TEST_REQUIRE(!ec, "open " << name << ": " << ec.message());
        return img;
    }
    sync_image open(const std::string& name) { return open(name, open_opts()); }
    std::pair<std::error_code, sync_image> try_open(const std::string& name, open_options o) {
        return qed::test::open(ioc, name, std::move(o));
    }

    // ---- raw access to a stored file ----
    std::uint64_t file_size(const std::string& name) { return fs.storage(name)->size(); }
    header hdr(const std::string& name) {
        std::array<std::byte, header_struct_size> b{};
        fs.storage(name)->read(0, b);
        return decode(b);
    }
    void set_hdr(const std::string& name, const header& h) {
        const auto b = encode(h);
        fs.storage(name)->write(0, b);
    }
    bool need_check_on_disk(const std::string& name) { return hdr(name).has(feature_need_check); }
    void set_need_check(const std::string& name) {
        auto h = hdr(name);
        h.features |= feature_need_check;
        set_hdr(name, h);
    }
    std::uint64_t u64(const std::string& name, std::uint64_t off) {
        std::array<std::byte, 8> b{};
        fs.storage(name)->read(off, b);
        std::uint64_t v = 0;
        for (int i = 7; i >= 0; --i) v = (v << 8) | std::to_integer<std::uint64_t>(b[static_cast<std::size_t>(i)]);
        return v;
    }
    void set_u64(const std::string& name, std::uint64_t off, std::uint64_t v) {
        std::array<std::byte, 8> b{};
        for (std::size_t i = 0; i < 8; ++i) b[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
        fs.storage(name)->write(off, b);
    }
    std::vector<std::uint8_t> bytes(const std::string& name, std::uint64_t off, std::size_t n) {
        std::vector<std::uint8_t> v(n);
        fs.storage(name)->read(off, {reinterpret_cast<std::byte*>(v.data()), n});
        return v;
    }
    std::vector<std::uint8_t> all_bytes(const std::string& name) {
        return bytes(name, 0, static_cast<std::size_t>(file_size(name)));
    }
    void put(const std::string& name, std::uint64_t off, const std::vector<std::uint8_t>& v) {
        fs.storage(name)->write(off, {reinterpret_cast<const std::byte*>(v.data()), v.size()});
    }
    /// A raw file of `size` bytes holding pattern `seed`.
    void make_raw(const std::string& name, std::uint64_t size, unsigned seed) {
        fs.storage(name)->resize(0);
        put(name, 0, pattern(0, static_cast<std::size_t>(size), seed));
    }
    /// L1 entry `i` of a QED file as stored.
    std::uint64_t l1_entry(const std::string& name, std::uint64_t i) {
        return u64(name, hdr(name).l1_table_offset + 8 * i);
    }
    /// Where the L2 entry for guest offset `pos` is stored (0: no table).
    std::uint64_t l2_entry_pos(const std::string& name, std::uint64_t pos) {
        const header h = hdr(name);
        const geometry g(h);
        const std::uint64_t l2 = u64(name, h.l1_table_offset + 8 * g.l1_index(pos));
        return l2 ? l2 + 8 * std::uint64_t{g.l2_index(pos)} : 0;
    }
    /// L2 entry for guest offset `pos` as stored (0 when there is no table).
    std::uint64_t l2_entry(const std::string& name, std::uint64_t pos) {
        const std::uint64_t at = l2_entry_pos(name, pos);
        return at ? u64(name, at) : 0;
    }
};

inline std::vector<std::uint8_t> read_bytes(sync_image& img, std::uint64_t off, std::size_t n) {
    std::vector<std::uint8_t> b(n, 0xee);
    const auto ec = img.read(off, b.data(), n);
    BOOST_TEST_REQUIRE(!ec, "read " << off << "+" << n << ": " << ec.message());
    return b;
}
inline void write_bytes(sync_image& img, std::uint64_t off, const std::vector<std::uint8_t>& b) {
    const auto ec = img.write(off, b.data(), b.size());
    BOOST_TEST_REQUIRE(!ec, "write " << off << "+" << b.size() << ": " << ec.message());
}
/// Write pattern `seed` over [off, off + n).
inline void write_pattern(sync_image& img, std::uint64_t off, std::size_t n, unsigned seed) {
    write_bytes(img, off, pattern(off, n, seed));
}
/// Read [off, off + n) and require pattern `seed` (0: zeros).
inline void expect_pattern(sync_image& img, std::uint64_t off, std::size_t n, unsigned seed, const char* what = "") {
    const auto got = read_bytes(img, off, n);
    const long bad = first_mismatch(got, 0, n, off, seed);
    BOOST_TEST(bad == -1, what << ": guest " << off << "+" << n << " should hold " << (seed ? "pattern " : "zeros ")
                               << seed << "; first wrong byte at guest "
                               << off + static_cast<std::uint64_t>(bad < 0 ? 0 : bad));
}
inline check_result check_image(sync_image& img, check_options::repair mode = check_options::repair::none) {
    auto [ec, r] = img.check(mode);
    BOOST_TEST_REQUIRE(!ec, "check: " << ec.message());
    return r;
}
inline void expect_clean(sync_image& img) {
    const auto r = check_image(img);
    BOOST_TEST(r.corruptions == 0u);
    BOOST_TEST(r.leaks == 0u);
    BOOST_TEST(r.check_errors == 0u);
    for (const auto& m : r.messages) BOOST_TEST_MESSAGE("check: " << m);
}
inline std::error_code make_empty(sync_image& img) {
    return std::get<0>(await<std::error_code>(img.ioc, [&](auto h) { img.img.async_make_empty(std::move(h)); }));
}

}  // namespace qed::test
