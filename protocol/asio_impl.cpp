// The compiled bodies of Asio and Beast (BOOST_*_SEPARATE_COMPILATION): built
// once here instead of in every translation unit that uses them.
#include <boost/asio/impl/src.hpp>
#include <boost/beast/src.hpp>
