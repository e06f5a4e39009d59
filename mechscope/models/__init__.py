"""The hooked-model core: loading, adapters, hook points, caches and weight views."""
