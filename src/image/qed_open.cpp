// SPDX-License-Identifier: BSL-1.0
// Opening a QED image: the metadata (header, backing name, L1 table), the
// autoclear bits, the backing chain, and check + repair of a dirty image.
#include "image/backing.hpp"
#include "image/qed_image.hpp"
#include "qed/node_options.hpp"

namespace qed::detail {

boost::asio::awaitable<std::error_code> qed_image::open(unsigned depth, std::vector<file_identity> chain) {
    auto fail = [this](std::error_code ec, const std::string& detail) {
        log(filename_ + ": " + (detail.empty() ? ec.message() : detail));
        return ec;
    };

    std::string detail;
    if (auto ec = co_await meta_.load(options_.l2_cache_size, options_.l2_cache_bytes, detail))
        co_return fail(ec, detail);
    const header& h = meta_.hdr();
    if (h.has(feature_backing_file)) {
        backing_full_ = resolve_backing_path(filename_, meta_.backing_name());
        if (h.has(feature_backing_format_no_probe)) backing_format_ = image_format::raw;
    }

    // Unknown autoclear bits describe data this program does not maintain:
    // clear them so a newer program knows not to trust it.
    if (!options_.read_only && (h.autoclear_features & ~known_autoclear_features))
        if (auto ec = co_await meta_.clear_unknown_autoclear()) co_return fail(ec, "");

    if (h.has(feature_backing_file) && options_.open_backing) {
        const std::string& name = meta_.backing_name();
        if (backing_full_.empty()) {  // a relative name, and the image's node has no directory (a quorum)
            std::string why;
            resolve_backing_path(filename_, name, &why);
            co_return fail(errc::bad_backing_name, why);
        }
        if (is_remote_name(filename_) && backing_full_.front() != '/' && !is_remote_name(backing_full_) &&
            !is_json_name(backing_full_))
            co_return fail(errc::bad_backing_name, "relative backing file name " + name +
                                                       " cannot be resolved against a remote image: use an "
                                                       "absolute path or a URI");
        chain.push_back(meta_.file().identity());
        auto [bec, dev] = co_await open_chain(backing_full_, backing_format_, depth + 1, std::move(chain));
        if (bec) {
            // qemu's wording (scripts match it). A refused, locked or looping chain
            // was already explained in one line by the chain's own check.
            if (bec == errc::backing_not_allowed || bec == errc::backing_loop || bec == errc::backing_chain_too_deep ||
                bec == errc::image_locked)
                co_return bec;
            if (bec.category() == std::system_category() || bec.category() == std::generic_category())
                co_return fail(bec,
                               "Could not open backing file: Could not open '" + backing_full_ + "': " + bec.message());
            co_return fail(bec, "Could not open backing file: " + backing_full_ + ": " + bec.message());
        }
        backing_ = std::move(dev);
    }

    // A dirty image may have dangling entries from an interrupted allocation.
    // Read-only opens skip this so a damaged image can still be read.
    const bool dirty = meta_.hdr().has(feature_need_check);
    const bool repair = dirty && !options_.read_only && options_.repair_on_open;
    unchecked_dirty_ = dirty && !repair;
    if (repair) {
        check_result r;
        if (auto ec = co_await check_and_apply(check_options::repair::all, r)) co_return fail(ec, "");
        if (r.check_errors) co_return fail(std::make_error_code(std::errc::io_error), "check could not complete");
        if (r.corruptions) {
            for (const auto& m : r.messages) log(filename_ + ": " + m);
            co_return fail(errc::corrupt_image, "image has " + std::to_string(r.corruptions) +
                                                    " corruptions that repair cannot fix; open it read-only to "
                                                    "recover data");
        }
        if (r.corruptions_fixed)
            log(filename_ + ": repaired " + std::to_string(r.corruptions_fixed) + " invalid table entries");
    }
    co_return std::error_code{};
}

}  // namespace qed::detail
