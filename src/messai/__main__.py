from messai.cli import main

main()
