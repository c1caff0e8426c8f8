"""launch/cli.py: the persistent compilation cache every launch command turns on."""


def test_compile_cache_location_and_switch(tmp_path):
    """launch.* turn on JAX's persistent compilation cache: $TTA_JAX_COMPILE_CACHE, else under XDG_CACHE_HOME /
    ~/.cache; 'off' disables it; an unusable directory only logs a warning."""
    import jax

    from launch import cli

    assert cli.compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "tta_jax" / "jax_compile")
    assert cli.compile_cache_dir({"TTA_JAX_COMPILE_CACHE": str(tmp_path / "c")}) == str(tmp_path / "c")
    for off in ("off", "0", "", "OFF"):
        assert cli.compile_cache_dir({"TTA_JAX_COMPILE_CACHE": off}) is None
    old = jax.config.jax_compilation_cache_dir
    try:
        assert cli.enable_compile_cache({"TTA_JAX_COMPILE_CACHE": str(tmp_path / "c")}) == str(tmp_path / "c")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c") and (tmp_path / "c").is_dir()
        (tmp_path / "file").write_text("x")
        assert cli.enable_compile_cache({"TTA_JAX_COMPILE_CACHE": str(tmp_path / "file" / "sub")}) is None
    finally:
        jax.config.update("jax_compilation_cache_dir", old)
