# The fake sysfs trees under machines/ contain the kernel's directory symlinks back to their
# ancestors (renderD128/device -> ../../../0000:00:02.0). pytest follows directory symlinks while
# collecting, so it must not walk them: there are no tests in here.
collect_ignore = ["machines"]
