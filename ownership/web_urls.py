from django.urls import path

urlpatterns: list = []  # the owner's pages join here
