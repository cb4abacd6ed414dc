from catnet.cli.main import main

main()
