// SPDX-License-Identifier: BSL-1.0
#include "check/scan.hpp"

#include <algorithm>
#include <cstdio>

namespace qed::detail {
namespace {

constexpr std::size_t max_messages = 100;

}  // namespace

std::string hex_offset(std::uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
    return buf;
}

check_verdict verdict_of(const check_result& r) noexcept {
    if (r.corruptions) return check_verdict::corrupt;
    if (r.check_errors) return check_verdict::unknown;
    return check_verdict::consistent;
}

std::uint64_t check_scan::bitmap::mark(std::uint64_t first, std::uint64_t n) {
    std::uint64_t twice = 0;
    for (std::uint64_t k = first; k < first + n && k < n_; ++k) {
        auto& w = bits_[k / 64];
        const std::uint64_t bit = std::uint64_t{1} << (k % 64);
        if (w & bit) ++twice;
        w |= bit;
    }
    return twice;
}

check_scan::check_scan(const layout& rules, const header& h, bool fix_corruptions, check_result& out)
    : rules_(rules), header_(h), fix_(fix_corruptions), out_(out), used_(rules.file_end >> rules.geo.cluster_bits) {
    out_.total_clusters = rules_.geo.clusters_for(h.image_size);
    // The header's clusters are implicitly in use (the leak scan skips them).
    if (used_.mark(h.l1_table_offset >> rules_.geo.cluster_bits, rules_.geo.table_size)) {
        ++out_.corruptions;
        note("L1 table overlaps itself");
    }
}

void check_scan::note(std::string line) {
    if (out_.messages.size() < max_messages) out_.messages.push_back(std::move(line));
}

void check_scan::io_error(const std::string& what) {
    ++out_.check_errors;
    note(what);
}

bool check_scan::visit_l1(std::uint32_t i, std::uint64_t& entry, bool& changed) {
    const geometry& g = rules_.geo;
    const std::uint64_t off = entry;
    if (off == 0) return false;
    if (!rules_.valid_l2_offset(off)) {
        note("L1 entry " + std::to_string(i) + ": invalid L2 table offset " + hex_offset(off) +
             (rules_.inside_l1(off, g.table_bytes) ? " (inside the L1 table)" : "") + (fix_ ? " (cleared)" : ""));
        if (fix_) {
            entry = 0;
            changed = true;
            ++out_.corruptions_fixed;
        } else {
            ++out_.corruptions;
        }
        return false;
    }
    if (const std::uint64_t twice = used_.mark(off >> g.cluster_bits, g.table_size)) {
        out_.corruptions += twice;
        note("L2 table at " + hex_offset(off) + " shares clusters with another table or data");
        return false;  // don't trust what it says
    }
    return true;
}

bool check_scan::visit_l2(std::uint64_t table_off, std::uint32_t base, table& piece) {
    const geometry& g = rules_.geo;
    bool changed = false;
    for (std::uint32_t k = 0; k < piece.size(); ++k) {
        const std::uint64_t e = piece[k];
        if (e == 0 || e == zero_cluster_entry) continue;
        if (!rules_.valid_data_offset(e)) {
            note("L2 table at " + hex_offset(table_off) + " entry " + std::to_string(base + k) +
                 ": invalid cluster offset " + hex_offset(e) +
                 (rules_.inside_l1(e, g.cluster_size) ? " (inside the L1 table)" : "") + (fix_ ? " (cleared)" : ""));
            if (fix_) {
                piece[k] = 0;
                changed = true;
                ++out_.corruptions_fixed;
            } else {
                ++out_.corruptions;
            }
            continue;
        }
        if (used_.mark(e >> g.cluster_bits, 1)) {
            ++out_.corruptions;
            note("cluster " + hex_offset(e) + " is referenced more than once");
            continue;
        }
        ++out_.allocated_clusters;
        if (prev_host_ && e != prev_host_ + g.cluster_size) ++out_.fragmented_clusters;
        prev_host_ = e;
    }
    return changed;
}

std::uint64_t check_scan::count_leaks(bool fixed_size) {
    const geometry& g = rules_.geo;
    std::uint64_t last_used = g.header_bytes >> g.cluster_bits;  // one past the last used cluster
    for (std::uint64_t k = used_.size(); k-- > 0;) {
        if (used_.test(k)) {
            last_used = std::max(last_used, k + 1);
            break;
        }
    }
    out_.image_end_offset = last_used << g.cluster_bits;
    const std::uint64_t scan_end = fixed_size ? std::min<std::uint64_t>(used_.size(), last_used) : used_.size();
    for (std::uint64_t k = header_.header_size; k < scan_end; ++k)
        if (!used_.test(k)) ++out_.leaks;
    return !fixed_size && used_.size() > last_used ? used_.size() - last_used : 0;
}

void check_scan::leaks_cut(std::uint64_t n) {
    out_.leaks -= n;
    out_.leaks_fixed += n;
}

void check_scan::report_leaks() {
    if (out_.leaks) note(std::to_string(out_.leaks) + " leaked clusters");
}

}  // namespace qed::detail
