# elastic_static_abseil(<abseil target>) defines the imported interface target
# elastic::absl_symbolize_static: the target and everything it needs, linked from
# abseil's static archives instead of its shared libraries, so a worker loads no
# abseil library at start-up (Debian's libabsl-dev ships both). Where an archive
# is missing, the shared library is linked instead. Sets, in the caller's scope,
# ELASTIC_ABSL_STATIC_ARCHIVES (the libraries in link order: each before those it
# needs) and ELASTIC_ABSL_LINK_EXTRAS (non-abseil link items they need).
include_guard(GLOBAL)

# Depth first: a library is appended after everything it needs; the caller
# reverses the list.
function(_elastic_static_abseil_visit target)
  if(target IN_LIST visited)
    return()
  endif()
  list(APPEND visited ${target})
  get_target_property(deps ${target} INTERFACE_LINK_LIBRARIES)
  if(deps)
    foreach(dep IN LISTS deps)
      string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" dep "${dep}")
      if(TARGET ${dep})
        _elastic_static_abseil_visit(${dep})
      elseif(NOT dep IN_LIST extras)
        list(APPEND extras "${dep}")
      endif()
    endforeach()
  endif()
  get_target_property(type ${target} TYPE)
  if(type MATCHES "^(SHARED|STATIC|UNKNOWN)_LIBRARY$")
    get_target_property(location ${target} IMPORTED_LOCATION)
    if(NOT location)
      get_target_property(configs ${target} IMPORTED_CONFIGURATIONS)
      list(GET configs 0 config)
      get_target_property(location ${target} IMPORTED_LOCATION_${config})
    endif()
    get_filename_component(dir ${location} DIRECTORY)
    get_filename_component(name ${location} NAME)
    string(REGEX REPLACE "\\.so(\\..*)?$" ".a" archive ${name})
    if(EXISTS ${dir}/${archive})
      list(APPEND order ${dir}/${archive})
    else()
      message(STATUS "elastic: no static archive ${dir}/${archive}; linking ${location}")
      list(APPEND order ${location})
    endif()
  endif()
  set(order "${order}" PARENT_SCOPE)
  set(extras "${extras}" PARENT_SCOPE)
  set(visited "${visited}" PARENT_SCOPE)
endfunction()

function(elastic_static_abseil root)
  set(order "")
  set(extras "")
  set(visited "")
  _elastic_static_abseil_visit(${root})
  list(REVERSE order)
  if(NOT TARGET elastic::absl_symbolize_static)
    add_library(elastic::absl_symbolize_static INTERFACE IMPORTED GLOBAL)
    get_target_property(includes ${root} INTERFACE_INCLUDE_DIRECTORIES)
    set_target_properties(elastic::absl_symbolize_static PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES "${includes}"
      INTERFACE_LINK_LIBRARIES "${order};${extras}")
  endif()
  set(ELASTIC_ABSL_STATIC_ARCHIVES "${order}" PARENT_SCOPE)
  set(ELASTIC_ABSL_LINK_EXTRAS "${extras}" PARENT_SCOPE)
endfunction()
