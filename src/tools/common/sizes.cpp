// SPDX-License-Identifier: BSL-1.0
#include "common/sizes.hpp"

#include <cmath>
#include <cstdio>

namespace qed::tools {

std::string io_size_string(double value) {
    static const char* const units[] = {" EiB", " PiB", " TiB", " GiB", " MiB", " KiB"};
    char buf[64];
    const char* suffix = " bytes";
    for (int k = 0; k < 6; ++k) {
        const double unit = std::ldexp(1.0, 10 * (6 - k));
        if (value >= unit) {
            std::snprintf(buf, sizeof buf, "%.3f", value / unit);
            suffix = units[k];
            break;
        }
    }
    if (suffix[1] == 'b') std::snprintf(buf, sizeof buf, "%f", value);
    // A whole number loses its ".000..." before the unit.
    std::string text = buf;
    const auto dot = text.find(".000");
    if (dot != std::string::npos) text.erase(dot);
    return text + suffix;
}

std::string img_size_string(std::uint64_t value) {
    static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    // The unit is the largest power of 1024 not above value * 1.024, so that
    // 1000 KiB prints as "0.977 MiB" (three significant digits at most).
    int exponent = 0;
    std::frexp(static_cast<double>(value) / (1000.0 / 1024.0), &exponent);
    int unit = exponent > 0 ? (exponent - 1) / 10 : 0;
    if (unit > 6) unit = 6;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%0.3g %s", std::ldexp(static_cast<double>(value), -10 * unit), units[unit]);
    return buf;
}

}  // namespace qed::tools
