// SPDX-License-Identifier: BSL-1.0
#include "server/list_exports.hpp"

#include <libnbd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace qed::nbd {

namespace {

struct handle_close {
    void operator()(nbd_handle* h) const noexcept { ::nbd_close(h); }
};

struct export_entry {
    std::string name;
    std::string description;
};

int fail(const std::string& what) {
    const char* e = ::nbd_get_error();
    std::cerr << "qed-nbd: " << what << (e ? std::string(": ") + e : std::string()) << "\n";
    return 1;
}

}  // namespace

int list_exports(const std::string& host, unsigned port, const std::string& socket_path) {
    std::unique_ptr<nbd_handle, handle_close> h(::nbd_create());
    if (!h) return fail("cannot create an NBD client handle");
    ::nbd_set_opt_mode(h.get(), true);
    ::nbd_set_full_info(h.get(), true);
    const int rc = socket_path.empty() ? ::nbd_connect_tcp(h.get(), host.c_str(), std::to_string(port).c_str())
                                       : ::nbd_connect_unix(h.get(), socket_path.c_str());
    if (rc == -1)
        return fail("cannot connect to " + (socket_path.empty() ? host + ":" + std::to_string(port) : socket_path));

    std::vector<export_entry> exports;
    nbd_list_callback list_cb{
        [](void* user, const char* name, const char* description) {
            static_cast<std::vector<export_entry>*>(user)->push_back({name, description ? description : ""});
            return 0;
        },
        &exports, nullptr};
    if (::nbd_opt_list(h.get(), list_cb) == -1) return fail("listing the exports failed");

    std::cout << "exports available: " << exports.size() << "\n";
    for (const auto& e : exports) {
        std::cout << " export: '" << e.name << "'\n";
        if (!e.description.empty()) std::cout << "  description: " << e.description << "\n";
        if (::nbd_set_export_name(h.get(), e.name.c_str()) == -1 || ::nbd_opt_info(h.get()) == -1) {
            std::cout << "  (no details: " << (::nbd_get_error() ? ::nbd_get_error() : "refused") << ")\n";
            continue;
        }
        std::cout << "  size:  " << ::nbd_get_size(h.get()) << "\n";
        // The transmission flags, rebuilt from what libnbd reports.
        struct bit {
            int on;
            unsigned value;
            const char* name;
        };
        const bit bits[] = {
            {::nbd_is_read_only(h.get()), 1u << 1, "readonly"},
            {::nbd_can_flush(h.get()), 1u << 2, "flush"},
            {::nbd_can_fua(h.get()), 1u << 3, "fua"},
            {::nbd_is_rotational(h.get()), 1u << 4, "rotational"},
            {::nbd_can_trim(h.get()), 1u << 5, "trim"},
            {::nbd_can_zero(h.get()), 1u << 6, "zeroes"},
            {::nbd_can_df(h.get()), 1u << 7, "df"},
            {::nbd_can_multi_conn(h.get()), 1u << 8, "multi"},
            {::nbd_can_cache(h.get()), 1u << 10, "cache"},
            {::nbd_can_fast_zero(h.get()), 1u << 11, "fast-zero"},
        };
        unsigned flags = 1;  // NBD_FLAG_HAS_FLAGS
        std::string names;
        for (const auto& b : bits)
            if (b.on == 1) {
                flags |= b.value;
                names += std::string(" ") + b.name;
            }
        char hex[16];
        std::snprintf(hex, sizeof hex, "0x%x", flags);
        std::cout << "  flags: " << hex << " (" << names << " )\n";
        std::cout << "  min block: " << ::nbd_get_block_size(h.get(), LIBNBD_SIZE_MINIMUM) << "\n";
        std::cout << "  opt block: " << ::nbd_get_block_size(h.get(), LIBNBD_SIZE_PREFERRED) << "\n";
        std::cout << "  max block: " << ::nbd_get_block_size(h.get(), LIBNBD_SIZE_MAXIMUM) << "\n";
        std::vector<std::string> contexts;
        nbd_context_callback ctx_cb{[](void* user, const char* name) {
                                        static_cast<std::vector<std::string>*>(user)->emplace_back(name);
                                        return 0;
                                    },
                                    &contexts, nullptr};
        if (::nbd_opt_list_meta_context(h.get(), ctx_cb) != -1) {
            std::cout << "  available meta contexts: " << contexts.size() << "\n";
            for (const auto& c : contexts) std::cout << "   " << c << "\n";
        }
    }
    ::nbd_opt_abort(h.get());
    return 0;
}

}  // namespace qed::nbd
