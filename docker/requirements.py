"""Print the requirements of the project and the given extras from pyproject.toml, one per line, so an
image installs its dependencies in a layer of their own before the code: python requirements.py serve onnx-cpu"""
import sys
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
requirements = list(project["dependencies"])
for extra in sys.argv[1:]:
    requirements += [item for item in project["optional-dependencies"][extra] if not item.startswith(project["name"] + "[")]
print("\n".join(requirements))
