from spectrum_cli.cli.app import main

main()
