# ``python -m spectrum_cli``: the interpreter put the working directory first on
# sys.path; entry.main() takes it off before spectrum imports anything else.
from spectrum_cli.cli.entry import main

if __name__ == "__main__":
    main()
