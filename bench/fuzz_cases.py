"""Hypothesis strategies for request bodies that the fuzzers draw from (``tests/test_fuzz.py`` in
the suite, ``make fuzz`` against a live server): arbitrary JSON, v1 and v2 bodies with near-valid
8x8 images and tensors, odd datatypes and shapes, and content types."""
from hypothesis import strategies as st

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4), max_leaves=30)
pixels = st.one_of(st.integers(-3, 20), st.floats(-2, 18, allow_nan=False), st.booleans(), st.text(max_size=2), st.none())
images = st.lists(st.lists(pixels, min_size=7, max_size=9), min_size=7, max_size=9)
v1_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"instances": st.one_of(json_values, st.lists(images, min_size=0, max_size=3))}, optional={"batch_test": json_values}),
)
datatypes = st.sampled_from(["FP32", "FP64", "INT64", "UINT8", "BOOL", "BYTES", "fp32", "", "FP128"])
shapes = st.one_of(st.lists(st.one_of(st.integers(-2, 70), st.booleans(), st.floats(0, 9)), max_size=4), json_values)
v2_tensors = st.fixed_dictionaries(
    {"name": st.sampled_from(["input", "x", ""]), "shape": shapes, "datatype": datatypes},
    optional={"data": st.one_of(json_values, st.lists(pixels, max_size=70)), "parameters": st.one_of(json_values, st.fixed_dictionaries({"binary_data_size": json_values}))},
)
v2_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"inputs": st.one_of(json_values, st.lists(v2_tensors, max_size=2))}, optional={"outputs": json_values, "parameters": json_values, "id": json_values}),
)
content_types = st.sampled_from(["application/json", "application/octet-stream", "text/plain", "", "application/json; charset=utf-32", "multipart/form-data"])
