"""Region policy files, <admdvs>.yaml, shipped with the package so that any install (editable or not)
finds them; GONGJI_POLICY_DIR points elsewhere."""
