// SPDX-License-Identifier: BSL-1.0
// A reference model of guest contents for randomized tests: what every
// 512-byte sector may hold. Usually one value; while requests race, the
// set of values they could leave.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace qed::test {

/// Content of one sector identified by a 64-bit tag; tag 0 = all zeros.
/// Sector bytes are generated from (tag, sector index) so that data
/// misplaced to another sector or request is caught.
inline void fill_sector(std::uint8_t* p, std::uint64_t tag, std::uint64_t sector) {
    if (tag == 0) {
        std::memset(p, 0, 512);
        return;
    }
    std::uint64_t x = tag * 0x9E3779B97F4A7C15ull ^ (sector + 1) * 0xC2B2AE3D27D4EB4Full;
    for (int i = 0; i < 512; i += 8) {
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 29;
        std::memcpy(p + i, &x, 8);
    }
}

class model {
public:
    explicit model(std::uint64_t size) : tags_(size / 512, 0) {}

    std::uint64_t sectors() const { return tags_.size(); }
    std::uint64_t tag(std::uint64_t sector) const { return tags_[sector]; }
    void set(std::uint64_t off, std::uint64_t len, std::uint64_t tag) {
        for (std::uint64_t s = off / 512; s < (off + len) / 512; ++s) tags_[s] = tag;
    }
    /// Fill a buffer with what [off, off+len) should hold.
    void expected(std::uint64_t off, std::uint64_t len, std::uint8_t* out) const {
        for (std::uint64_t s = off / 512; s < (off + len) / 512; ++s)
            fill_sector(out + (s - off / 512) * 512, tags_[s], s);
    }
    /// Which tag a sector's bytes carry, among `candidates`; -1 if none.
    static int match(const std::uint8_t* p, std::uint64_t sector, const std::vector<std::uint64_t>& candidates) {
        std::uint8_t buf[512];
        for (std::size_t i = 0; i < candidates.size(); ++i) {
            fill_sector(buf, candidates[i], sector);
            if (std::memcmp(buf, p, 512) == 0) return static_cast<int>(i);
        }
        return -1;
    }

    /// For failure messages: which (tag, sector) produced these bytes.
    static std::string describe(const std::uint8_t* p, std::uint64_t sector, std::uint64_t max_tag) {
        std::uint8_t probe[512];
        for (std::uint64_t t = 0; t < max_tag; ++t)
            for (std::int64_t d = -64; d <= 64; ++d) {
                if (static_cast<std::int64_t>(sector) + d < 0) continue;
                fill_sector(probe, t, sector + d);
                if (!std::memcmp(probe, p, 512))
                    return "tag " + std::to_string(t) + " of sector " + std::to_string(sector + d);
            }
        return "unknown bytes";
    }

private:
    std::vector<std::uint64_t> tags_;
};

}  // namespace qed::test
