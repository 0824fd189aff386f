from forge import ConcatDim, FilePattern, XarrayZarrRecipe


def url(time):
    return f"https://data.example.org/archive/all_{time:04d}.nc"


pattern = FilePattern(url, ConcatDim("time", list(range(4))))
recipe = XarrayZarrRecipe(pattern, target_chunks={"time": 2}, target_format="icechunk")
