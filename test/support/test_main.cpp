// SPDX-License-Identifier: BSL-1.0
// The Boost.Test runner (header-only variant), compiled once for all tests.
#define BOOST_TEST_MODULE qed
#include <boost/test/included/unit_test.hpp>
