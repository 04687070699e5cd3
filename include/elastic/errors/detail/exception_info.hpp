// Turns a thrown object into text: its demangled type, its message, and the chain
// of std::nested_exception levels behind it.
#pragma once

#include <cxxabi.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

namespace elastic::errors::detail {

inline std::string demangle(const char* mangled) {
  if (mangled == nullptr) return "<unknown type>";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name(abi::__cxa_demangle(mangled, nullptr, nullptr, &status), std::free);
  std::string result = (status == 0 && name) ? std::string(name.get()) : std::string(mangled);
  // std::throw_with_nested wraps the user's type; show the user's type.
  const std::string nested = "std::_Nested_exception<";
  if (result.rfind(nested, 0) == 0 && result.back() == '>')
    result = result.substr(nested.size(), result.size() - nested.size() - 1);
  if (result == "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >")
    result = "std::string";
  return result;
}

// One level of an exception chain.
struct ExceptionLevel {
  std::string type;              // demangled dynamic type, e.g. "std::runtime_error"
  std::string what;              // what(), or a rendering of a non-std value
  const void* object = nullptr;  // the thrown object, to find its throw-site trace

  std::string headline() const { return type + ": " + what; }
};

inline void describe_into(std::vector<ExceptionLevel>& out, std::exception_ptr error);

inline void describe_into(std::vector<ExceptionLevel>& out, const std::exception& error) {
  const char* what = error.what();
  // The most derived object is the address the exception was thrown with.
  out.push_back({demangle(typeid(error).name()), what ? what : "", dynamic_cast<const void*>(&error)});
  // Bounded so a cycle built by hand (possible with exception_ptr) cannot loop forever.
  if (out.size() >= 64) return;
  if (auto* nested = dynamic_cast<const std::nested_exception*>(&error); nested && nested->nested_ptr())
    describe_into(out, nested->nested_ptr());
}

// The address of the object an exception_ptr holds. libstdc++ and libc++ both
// keep exactly that pointer as the exception_ptr's only member.
inline const void* thrown_object(const std::exception_ptr& error) {
#if defined(__GLIBCXX__) || defined(_LIBCPP_VERSION)
  static_assert(sizeof(std::exception_ptr) == sizeof(void*), "exception_ptr is expected to hold one pointer");
  const void* object = nullptr;
  std::memcpy(&object, static_cast<const void*>(&error), sizeof(object));
  return object;
#else
  (void)error;
  return nullptr;
#endif
}

inline void describe_into(std::vector<ExceptionLevel>& out, std::exception_ptr error) {
  if (!error) return;
  const void* object = thrown_object(error);
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    describe_into(out, e);
  } catch (const char* text) {
    out.push_back({"const char*", text ? text : "(null)", object});
  } catch (const std::string& text) {
    out.push_back({"std::string", text, object});
  } catch (int value) {
    out.push_back({"int", std::to_string(value), object});
  } catch (long value) {
    out.push_back({"long", std::to_string(value), object});
  } catch (long long value) {
    out.push_back({"long long", std::to_string(value), object});
  } catch (unsigned value) {
    out.push_back({"unsigned int", std::to_string(value), object});
  } catch (unsigned long value) {
    out.push_back({"unsigned long", std::to_string(value), object});
  } catch (double value) {
    out.push_back({"double", std::to_string(value), object});
  } catch (...) {
    const std::type_info* type = abi::__cxa_current_exception_type();
    out.push_back(
        {demangle(type ? type->name() : nullptr), "<exception of a type not derived from std::exception>", object});
  }
}

inline std::vector<ExceptionLevel> describe_exception(std::exception_ptr error) {
  std::vector<ExceptionLevel> levels;
  describe_into(levels, error);
  if (levels.empty()) levels.push_back({"<no exception>", "", nullptr});
  return levels;
}

inline std::vector<ExceptionLevel> describe_exception(const std::exception& error) {
  std::vector<ExceptionLevel> levels;
  describe_into(levels, error);
  return levels;
}

}  // namespace elastic::errors::detail
